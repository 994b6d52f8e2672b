//! Credit leases end to end: a busy user's calls are admitted against the gateway's lease in
//! memory instead of a hold statement each, billed exactly, and the lease goes back when the
//! user goes quiet; two gateway processes leasing from one balance never admit more than it.

use bigdecimal::BigDecimal;
use diesel_async::RunQueryDsl;
use integration_tests::{BillingWorker, Credential, TestApp, eventually, spawn_app_with};
use mock_llm::MockConfig;
use reqwest::Method;
use serde_json::{Value, json};

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(diesel::QueryableByName)]
struct Sum {
    #[diesel(sql_type = diesel::sql_types::Numeric)]
    amount: BigDecimal,
}

async fn count(app: &TestApp, sql: &str, user_id: i64) -> i64 {
    let mut conn = app.pool.get().await.unwrap();
    diesel::sql_query(sql)
        .bind::<diesel::sql_types::BigInt, _>(user_id)
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .n
}

async fn amount(app: &TestApp, sql: &str, user_id: i64) -> BigDecimal {
    let mut conn = app.pool.get().await.unwrap();
    diesel::sql_query(sql)
        .bind::<diesel::sql_types::BigInt, _>(user_id)
        .get_result::<Sum>(&mut conn)
        .await
        .unwrap()
        .amount
}

const HOLD_ROWS: &str = "SELECT count(*) AS n FROM balance_holds WHERE user_id = $1";
const OPEN_LEASES: &str = "SELECT count(*) AS n FROM credit_leases WHERE user_id = $1 AND closed_at IS NULL AND amount > 0";
const HELD: &str = "SELECT held AS amount FROM users WHERE id = $1";
const BALANCE: &str = "SELECT balance AS amount FROM users WHERE id = $1";

async fn call(app: &TestApp, key: &str, body: &Value) -> u16 {
    app.send(
        Method::POST,
        "/v1/chat/completions",
        Credential::Bearer(key),
        Some(body.clone()),
    )
    .await
    .status
    .as_u16()
}

/// Runs `n` calls, `at_once` at a time; answers how many got 200.
async fn calls(app: &TestApp, key: &str, body: &Value, n: usize, at_once: usize) -> usize {
    let mut ok = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(at_once) {
        let replies =
            futures_util::future::join_all(chunk.iter().map(|_| call(app, key, body))).await;
        ok += replies.iter().filter(|s| **s == 200).count();
    }
    ok
}

/// A user with a balance of 10 who made 8 calls, enough demand for a lease (`leased`: wait
/// until the gateway has it); the body of those calls.
async fn busy_user(app: &TestApp, leased: bool) -> (integration_tests::ChatSetup, Value) {
    let setup = app
        .chat_setup(
            mock_llm::start(MockConfig::default(), "127.0.0.1", 0)
                .await
                .unwrap(),
            &[("good-key", 1)],
            "10",
        )
        .await;
    let body = json!({"model": setup.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16});
    assert_eq!(calls(app, &setup.access_key, &body, 8, 1).await, 8);
    if leased {
        eventually(10, || async {
            (count(app, OPEN_LEASES, setup.user_id).await == 1).then_some(())
        })
        .await;
    }
    (setup, body)
}

/// With billing-worker stopped, nothing settles and no hold is deleted: the hold rows left are
/// exactly the calls admitted by a hold. A busy user's calls, once the lease is granted, place
/// none; with leases off, every call places one.
async fn hold_rows_for_busy_user(lease_max_percent: u32) -> (i64, i64) {
    let app = spawn_app_with(|s| s.calls.lease_max_percent = lease_max_percent).await;
    let (setup, body) = busy_user(&app, lease_max_percent > 0).await;
    let before = count(&app, HOLD_ROWS, setup.user_id).await;
    assert_eq!(calls(&app, &setup.access_key, &body, 100, 10).await, 100);
    let after = count(&app, HOLD_ROWS, setup.user_id).await;

    // Settled, every call is billed exactly once, and the books balance.
    let worker = BillingWorker::start(&app).await;
    let rows = eventually(20, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 108).then_some(rows)
    })
    .await;
    let billed: BigDecimal = rows.iter().map(|r| r.2.clone()).sum();
    assert_eq!(
        amount(&app, BALANCE, setup.user_id).await,
        BigDecimal::from(10) - billed
    );
    app.assert_books_balance().await;
    worker.stop().await;
    (before, after - before)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_users_calls_are_admitted_against_a_lease_not_a_hold_each() {
    let (_, by_hold) = hold_rows_for_busy_user(25).await;
    assert!(
        by_hold <= 5,
        "{by_hold} of 100 calls placed a hold although the lease covered them"
    );
    let (before, by_hold) = hold_rows_for_busy_user(0).await;
    assert_eq!(
        (before, by_hold),
        (8, 100),
        "with leases off every call places a hold"
    );
}

/// Once the user goes quiet the lease's unused part goes back: nothing stays held.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_lease_goes_back_and_nothing_stays_held() {
    let app = spawn_app_with(|s| s.calls.lease_idle_ms = 1_000).await;
    let worker = BillingWorker::start(&app).await;
    let (setup, _) = busy_user(&app, true).await;
    assert!(amount(&app, HELD, setup.user_id).await > 0);
    eventually(15, || async {
        (amount(&app, HELD, setup.user_id).await == 0).then_some(())
    })
    .await;
    app.assert_books_balance().await;
    worker.stop().await;
}

/// Two gateway processes on one database, each with a lease of the same user, and 300 slow
/// calls split across them: together they admit no more calls than the balance covers at each
/// call's maximum cost, nothing is charged past what was reserved, and the books balance.
#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_leasing_one_balance_never_admit_more_than_it_covers() {
    let a = spawn_app_with(|s| {
        s.calls.lease_min_calls = 4;
        s.calls.lease_idle_ms = 60_000;
    })
    .await;
    let b_app = gateway_api::Application::build(a.settings.clone())
        .await
        .unwrap();
    let b_address = format!("http://127.0.0.1:{}", b_app.port());
    tokio::spawn(b_app.run_until_stopped());
    let worker = BillingWorker::start(&a).await;
    let setup = a
        .chat_setup(
            // Slow enough that every call of the burst is admitted before the first one ends
            // (even on a loaded machine): a call that ends gives back the unused part of its
            // reservation, and calls admitted with it would exceed the bound checked below.
            mock_llm::start(
                MockConfig {
                    latency_ms: 5_000,
                    ..MockConfig::default()
                },
                "127.0.0.1",
                0,
            )
            .await
            .unwrap(),
            &[("good-key", 1)],
            "0.02",
        )
        .await;
    let body = json!({"model": setup.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 256});
    let via = |address: String| {
        let client = a.client.clone();
        let key = setup.access_key.clone();
        let body = body.clone();
        async move {
            client
                .post(format!("{address}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // The second process learns of the new model at its next catalog reload: one call through
    // it succeeds (and is billed) once it has.
    eventually(10, || async {
        (via(b_address.clone()).await == 200).then_some(())
    })
    .await;
    // Warm-up: 8 calls through each process; their holds show one call's maximum cost.
    let warm_up = (0..16).map(|i| {
        via(if i % 2 == 0 {
            a.address.clone()
        } else {
            b_address.clone()
        })
    });
    let one_call = eventually(10, || async {
        let mut conn = a.pool.get().await.unwrap();
        diesel::sql_query("SELECT amount FROM balance_holds WHERE user_id = $1 LIMIT 1")
            .bind::<diesel::sql_types::BigInt, _>(setup.user_id)
            .get_result::<Sum>(&mut conn)
            .await
            .ok()
            .map(|s| s.amount)
    });
    let (statuses, one_call) = tokio::join!(futures_util::future::join_all(warm_up), one_call);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    eventually(20, || async {
        (a.usage_of(setup.user_id).await.len() == 17
            && count(&a, OPEN_LEASES, setup.user_id).await == 2)
            .then_some(())
    })
    .await;

    let start = amount(&a, BALANCE, setup.user_id).await;
    let burst = (0..300).map(|i| {
        via(if i % 2 == 0 {
            a.address.clone()
        } else {
            b_address.clone()
        })
    });
    let statuses = futures_util::future::join_all(burst).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!(ok + refused, 300, "{statuses:?}");
    // At most what the balance covers at the maximum cost, and most of that.
    let covered = (start.clone() / one_call.clone()).with_scale(0);
    let covered: usize = covered.to_string().parse().unwrap();
    assert!(ok <= covered, "{ok} admitted, the balance covers {covered}");
    assert!(
        ok * 2 >= covered,
        "{ok} admitted of {covered}: leases strand too much"
    );

    let rows = eventually(30, || async {
        let rows = a.usage_of(setup.user_id).await;
        (rows.len() == 17 + ok).then_some(rows)
    })
    .await;
    let billed: BigDecimal = rows[17..].iter().map(|r| r.2.clone()).sum();
    let end = amount(&a, BALANCE, setup.user_id).await;
    assert_eq!(end, start - billed, "every admitted call charged in full");
    assert!(end >= 0);
    a.assert_books_balance().await;
    worker.stop().await;
}
