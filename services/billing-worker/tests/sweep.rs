//! The sweeper settles charges parked in the outbox: once each, also with several sweepers
//! (billing-worker replicas) at work on the same outbox at the same time, while calls of the
//! same users are admitted.

#![allow(clippy::unwrap_used)]

use std::str::FromStr;

use bigdecimal::BigDecimal;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use domain::{BillingMessage, Money, Usage};

const USERS: i64 = 12;
const CHARGES: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sweepers_settle_every_parked_charge_exactly_once() {
    let (url, pool) = persistence::testing::migrated_database(8).await.unwrap();
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
    for sql in [
        "INSERT INTO providers (id, name, kind, base_url) VALUES (1, 'p', 'openai', 'http://p')".to_owned(),
        "INSERT INTO llm_models (id, name, provider_id, upstream_model, kind, pricing) VALUES (1, 'm', 1, 'm', 'chat', '{}')".to_owned(),
        format!(
            "INSERT INTO users (id, email, password_hash, balance)
             SELECT g, 'u' || g || '@x.io', 'h', 100 FROM generate_series(1, {USERS}) g"
        ),
        format!(
            "INSERT INTO balance_ledger (user_id, delta, balance_after, kind, reference)
             SELECT g, 100, 100, 'topup', 'seed-' || g FROM generate_series(1, {USERS}) g"
        ),
    ] {
        diesel::sql_query(sql).execute(&mut conn).await.unwrap();
    }
    // Each charge has its hold; the outbox holds them in an order that mixes the users, so
    // sweepers settling charge by charge in that order would lock users in different orders.
    let cost = Money::parse("0.01").unwrap();
    for i in 0..CHARGES {
        let user_id = (i as i64 * 7) % USERS + 1;
        let request_id = uuid::Uuid::new_v4();
        persistence::billing::place_hold(
            &mut conn,
            user_id,
            request_id,
            &Money::parse("0.05").unwrap(),
            600,
        )
        .await
        .unwrap()
        .unwrap();
        let message = BillingMessage {
            request_id,
            user_id,
            access_key_id: None,
            model_id: 1,
            model_name: "m".to_owned(),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                ..Usage::default()
            },
            cost: cost.clone(),
            lease_id: None,
            occurred_at: chrono::Utc::now(),
        };
        let payload = serde_json::to_string(&message).unwrap();
        persistence::billing::outbox_insert_many(&mut conn, &[(request_id, payload)])
            .await
            .unwrap();
    }

    // Calls being admitted and released for the same users meanwhile queue on their rows.
    let admissions = (0..3).map(|n| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            for i in 0..150 {
                let user_id = (i * 5 + n) % USERS + 1;
                let request_id = uuid::Uuid::new_v4();
                let amount = Money::parse("0.02").unwrap();
                persistence::billing::place_hold(&mut conn, user_id, request_id, &amount, 600)
                    .await
                    .unwrap()
                    .unwrap();
                assert!(
                    persistence::billing::release_hold(&mut conn, request_id)
                        .await
                        .unwrap()
                );
            }
        })
    });
    let sweeps = (0..4).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            billing_worker::settle::sweep(&pool, Some(std::time::Duration::ZERO)).await
        })
    });
    let (admitted, swept) = tokio::join!(
        futures_util::future::join_all(admissions),
        futures_util::future::join_all(sweeps)
    );
    for admission in admitted {
        admission.unwrap();
    }
    for sweep in swept {
        sweep
            .unwrap()
            .expect("a sweep failed (a deadlock between sweepers?)");
    }

    #[derive(diesel::QueryableByName)]
    struct Totals {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        logs: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        parked: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        open_holds: i64,
        #[diesel(sql_type = diesel::sql_types::Numeric)]
        balances: BigDecimal,
    }
    let totals: Totals = diesel::sql_query(
        "SELECT (SELECT count(*) FROM usage_logs) AS logs,
                (SELECT count(*) FROM billing_outbox) AS parked,
                (SELECT count(*) FROM balance_holds WHERE status = 'open') AS open_holds,
                (SELECT sum(balance) FROM users) AS balances",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(totals.logs, CHARGES as i64);
    assert_eq!(totals.parked, 0);
    assert_eq!(totals.open_holds, 0);
    // 12 users × 100, minus 300 charges of 0.01.
    assert_eq!(totals.balances, BigDecimal::from_str("1197").unwrap());
    let mismatches = persistence::billing::reconcile(&mut conn).await.unwrap();
    assert!(mismatches.is_empty(), "{mismatches:?}");
}
