//! The synchronous model call end to end: gateway-api, billing-worker and the mock LLM, with
//! real Postgres and RabbitMQ.

use std::str::FromStr;

use bigdecimal::BigDecimal;
use domain::{Money, Pricing, Usage};
use integration_tests::{
    BillingWorker, ChatSetup, Credential, INPUT_PER_MILLION, OUTPUT_PER_MILLION, TestApp,
    eventually, spawn_app, spawn_app_with,
};
use mock_llm::MockConfig;
use reqwest::Method;
use serde_json::{Value, json};

fn dec(s: &str) -> BigDecimal {
    BigDecimal::from_str(s).unwrap()
}

/// API.md's formula, computed independently of the gateway.
fn expected_cost(prompt: u64, completion: u64) -> BigDecimal {
    let pricing = Pricing {
        input_per_million: Some(Money::parse(INPUT_PER_MILLION).unwrap()),
        output_per_million: Some(Money::parse(OUTPUT_PER_MILLION).unwrap()),
        cached_input_per_million: None,
        per_image: None,
        per_request: None,
        ..Pricing::default()
    };
    let usage = Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        ..Usage::default()
    };
    pricing.cost(&usage).unwrap().into_decimal()
}

async fn mock(config: MockConfig) -> mock_llm::MockServer {
    mock_llm::start(config, "127.0.0.1", 0).await.unwrap()
}

fn chat(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_is_answered_and_billed_exactly_by_the_formula() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let setup = app
        .chat_setup(mock(MockConfig::default()).await, &[("good-key", 1)], "10")
        .await;

    let reply = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&setup.access_key),
            Some(chat(&setup.model, "one two three four five")),
        )
        .await;
    let body = reply.assert_status(200);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["model"], "demo-chat",
        "the public name comes back, not the upstream one"
    );
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    assert_eq!(body["usage"]["completion_tokens"], 16);

    let usage = eventually(10, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 1).then_some(rows)
    })
    .await;
    let cost = expected_cost(5, 16);
    assert_eq!(cost, dec("0.00001035"));
    assert_eq!(usage[0], (5, 16, cost.clone()));
    let (balance, ledger) = app.balance_and_ledger_sum(setup.user_id).await;
    assert_eq!(balance, dec("10") - cost);
    assert_eq!(balance, ledger);
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;

    // The seed's alias and header work the same way.
    let alias = app
        .send(
            Method::POST,
            "/v1/chat",
            Credential::AccessKeyHeader(&setup.access_key),
            Some(chat(&setup.model, "hello")),
        )
        .await;
    alias.assert_status(200);
    eventually(10, || async {
        (app.usage_of(setup.user_id).await.len() == 2).then_some(())
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_passes_chunks_through_and_bills_the_reported_usage() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let setup = app
        .chat_setup(mock(MockConfig::default()).await, &[("good-key", 1)], "10")
        .await;

    let mut request = chat(&setup.model, "alpha beta gamma");
    request["stream"] = json!(true);
    let reply = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&setup.access_key),
            Some(request.clone()),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events: Vec<&str> = reply
        .text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    assert!(
        events.iter().all(|e| !e.contains("mock-gpt")),
        "upstream model name leaked"
    );
    // The client did not ask for usage: the extra usage chunk is hidden.
    assert!(!reply.text.contains("\"prompt_tokens\""), "{}", reply.text);
    let text: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e.trim_start_matches("data: ")).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text.split_whitespace().count(), 16);

    // Asked for usage: it is passed through.
    request["stream_options"] = json!({"include_usage": true});
    let with_usage = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&setup.access_key),
            Some(request),
        )
        .await;
    assert!(
        with_usage.text.contains("\"prompt_tokens\":3"),
        "{}",
        with_usage.text
    );

    let rows = eventually(10, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    for row in &rows {
        assert_eq!(*row, (3, 16, expected_cost(3, 16)));
    }
    app.assert_books_balance().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_models_bad_bodies_and_short_balances_are_refused_without_a_charge() {
    let app = spawn_app().await;
    let setup = app
        .chat_setup(mock(MockConfig::default()).await, &[("good-key", 1)], "0")
        .await;
    let key = Credential::Bearer(&setup.access_key);
    let call = |body: Value| {
        app.send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&setup.access_key),
            Some(body),
        )
    };
    let _ = key;

    call(chat("no-such-model", "hi"))
        .await
        .assert_error(404, "model_not_found");
    call(json!({"messages": [{"role": "user", "content": "hi"}]}))
        .await
        .assert_error(400, "invalid_request");
    call(json!({"model": setup.model, "messages": []}))
        .await
        .assert_error(400, "invalid_request");
    call(json!({"model": setup.model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000})).await.assert_error(400, "invalid_request");
    call(json!({"model": setup.model, "messages": [{"role": "user", "content": "x"}], "max_tokens": -1})).await.assert_error(400, "invalid_request");
    call(json!({"model": setup.model, "messages": [{"role": "user", "content": "x"}], "stream": "yes"})).await.assert_error(400, "invalid_request");
    call(json!({"model": setup.model, "messages": [{"role": "user", "content": "x"}], "n": 0}))
        .await
        .assert_error(400, "invalid_request");
    call(json!({"model": setup.model, "messages": [{"role": "user", "content": "x"}], "n": 17}))
        .await
        .assert_error(400, "invalid_request");
    // No balance: 402 before any upstream call.
    call(chat(&setup.model, "hi"))
        .await
        .assert_error(402, "insufficient_balance");
    assert_eq!(setup.mock.calls(), 0);
    assert_eq!(app.count("balance_holds").await, 0);
    // No credential, a revoked key.
    app.send(
        Method::POST,
        "/v1/chat/completions",
        Credential::None,
        Some(chat(&setup.model, "hi")),
    )
    .await
    .assert_error(401, "unauthorized");
    app.send(
        Method::POST,
        "/v1/chat/completions",
        Credential::Bearer(&setup.token),
        Some(chat(&setup.model, "hi")),
    )
    .await
    .assert_error(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_key_fails_over_and_an_upstream_failure_costs_nothing() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    // The failing key is picked first almost always (weight), the good one answers.
    let setup = app
        .chat_setup(
            mock(MockConfig::default()).await,
            &[("fail-500", 1000), ("good-key", 1)],
            "10",
        )
        .await;
    let reply = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&setup.access_key),
            Some(chat(&setup.model, "hi there")),
        )
        .await;
    reply.assert_status(200);
    assert!(setup.mock.calls_with_key("good-key") >= 1);
    eventually(10, || async {
        (app.usage_of(setup.user_id).await.len() == 1).then_some(())
    })
    .await;

    let before = app.balance_and_ledger_sum(setup.user_id).await.0;
    // The provider refusing the request itself (400) is the client's error, passed through,
    // and not a reason to fail over.
    let calls_before = setup.mock.calls();
    let refused = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&setup.access_key),
            Some(chat(&setup.model, "bad [[status:400]]")),
        )
        .await;
    refused.assert_error(400, "invalid_request");
    assert_eq!(setup.mock.calls(), calls_before + 1);
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    // Every key fails for this prompt: 502, the hold released, nothing charged.
    let failed = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&setup.access_key),
            Some(chat(&setup.model, "boom [[status:500]]")),
        )
        .await;
    failed.assert_error(502, "upstream_error");
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    // Both keys now cool down: the next call is refused at once with 503, also for free.
    let cooling = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&setup.access_key),
            Some(chat(&setup.model, "hi")),
        )
        .await;
    cooling.assert_error(503, "unavailable");
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.billing_barrier().await;
    assert_eq!(app.usage_of(setup.user_id).await.len(), 1);
    assert_eq!(app.balance_and_ledger_sum(setup.user_id).await.0, before);
    app.assert_books_balance().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_calls_against_a_balance_for_fifty() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    // Slow enough that all 200 admissions happen while the first holds are still open (a
    // settled call frees the unused part of its hold, which would admit more).
    let setup = app
        .chat_setup(
            mock(MockConfig {
                latency_ms: 3000,
                ..MockConfig::default()
            })
            .await,
            &[("good-key", 1)],
            "1",
        )
        .await;
    let body = json!({"model": setup.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16});
    let one_hold = {
        // What the gateway reserves for this body: prompt upper bound + max_tokens, priced.
        // Read while the call is open: a settled hold is deleted.
        let call = app.send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&setup.access_key),
            Some(body.clone()),
        );
        let held = eventually(10, || open_hold_amount(&app, setup.user_id));
        let (reply, held) = tokio::join!(call, held);
        reply.assert_status(200);
        eventually(10, || async {
            (app.usage_of(setup.user_id).await.len() == 1).then_some(())
        })
        .await;
        assert_eq!(
            app.count("balance_holds").await,
            0,
            "the settled hold is deleted"
        );
        held
    };
    // Set the balance to exactly 50 holds.
    let (balance, _) = app.balance_and_ledger_sum(setup.user_id).await;
    let target = one_hold.clone() * BigDecimal::from(50);
    let delta = Money::from_decimal_rounded(target.clone() - balance).unwrap();
    app.post(
        &format!("/v1/admin/users/{}/balance-adjustments", setup.user_id),
        app.admin_token(),
        json!({"amount": delta.to_string(), "reason": "exactly fifty calls"}),
    )
    .await
    .assert_status(200);
    let start = app.balance_and_ledger_sum(setup.user_id).await.0;
    assert_eq!(start, target);

    let calls = (0..200).map(|_| {
        app.send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&setup.access_key),
            Some(body.clone()),
        )
    });
    let replies = futures_util::future::join_all(calls).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused = replies.iter().filter(|r| r.status == 402).count();
    let statuses: std::collections::BTreeMap<u16, usize> =
        replies.iter().fold(Default::default(), |mut m, r| {
            *m.entry(r.status.as_u16()).or_default() += 1;
            m
        });
    assert_eq!(
        ok, 50,
        "exactly the 50 affordable calls are admitted: {statuses:?}"
    );
    assert_eq!(ok + refused, 200, "{statuses:?}");

    let settled = eventually(20, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == ok + 1).then_some(rows)
    })
    .await;
    let billed: BigDecimal = settled[1..].iter().map(|r| r.2.clone()).sum();
    let end = app.balance_and_ledger_sum(setup.user_id).await.0;
    assert_eq!(end, start - billed);
    assert!(end >= 0);
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    worker.stop().await;
}

/// The amount the gateway holds for the user's open call, if one is open.
async fn open_hold_amount(app: &integration_tests::TestApp, user_id: i64) -> Option<BigDecimal> {
    use diesel::{ExpressionMethods, OptionalExtension, QueryDsl};
    use diesel_async::RunQueryDsl;
    use persistence::schema::balance_holds;
    let mut conn = app.pool.get().await.unwrap();
    balance_holds::table
        .filter(balance_holds::user_id.eq(user_id))
        .filter(balance_holds::status.eq("open"))
        .select(balance_holds::amount)
        .first(&mut conn)
        .await
        .optional()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_mid_stream_is_billed_for_the_whole_generation() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let slow = MockConfig {
        stream_chunk_delay_ms: 100,
        completion_tokens: 50,
        ..MockConfig::default()
    };
    let setup = app
        .chat_setup(mock(slow).await, &[("good-key", 1)], "10")
        .await;
    let mut body = chat(&setup.model, "tell me a long story");
    body["max_tokens"] = json!(50);
    body["stream"] = json!(true);
    app.stream_then_leave(&setup.access_key, &body, 5).await;

    let rows = eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 1).then_some(rows)
    })
    .await;
    let (prompt, completion, cost) = rows[0].clone();
    assert!(prompt > 0);
    // The provider generates (and bills) the whole answer whatever the client does: the
    // gateway reads its stream to the end and bills the provider's usage.
    assert_eq!(
        completion, 50,
        "the provider's whole generation is billed after the client left"
    );
    assert_eq!(cost, expected_cost(prompt as u64, completion as u64));
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_succeed_while_billing_worker_is_down_and_settle_when_it_returns() {
    let app = spawn_app().await;
    let setup = app
        .chat_setup(mock(MockConfig::default()).await, &[("good-key", 1)], "10")
        .await;
    for _ in 0..5 {
        app.send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&setup.access_key),
            Some(chat(&setup.model, "one two")),
        )
        .await
        .assert_status(200);
    }
    assert_eq!(
        app.usage_of(setup.user_id).await.len(),
        0,
        "nothing settles without the worker"
    );
    let worker = BillingWorker::start(&app).await;
    let rows = eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 5).then_some(rows)
    })
    .await;
    let billed: BigDecimal = rows.iter().map(|r| r.2.clone()).sum();
    assert_eq!(billed, expected_cost(2, 16) * BigDecimal::from(5));
    assert_eq!(
        app.balance_and_ledger_sum(setup.user_id).await.0,
        dec("10") - billed
    );
    app.assert_books_balance().await;
    worker.stop().await;

    // What the user reads: every call names the ledger entry that took it, and each charge
    // entry took exactly the calls naming it (the five waited in the queue, so they share
    // entries: fewer charge entries than calls, each with a note saying how many).
    let usage = app.get("/v1/me/usage", &setup.token).await;
    let usage = usage.assert_status(200)["data"].as_array().unwrap().clone();
    let ledger = app.get("/v1/me/ledger", &setup.token).await;
    let ledger = ledger.assert_status(200)["data"]
        .as_array()
        .unwrap()
        .clone();
    let charges: Vec<&serde_json::Value> =
        ledger.iter().filter(|e| e["kind"] == "charge").collect();
    assert!(
        !charges.is_empty() && charges.len() < 5,
        "one entry per settled batch: {charges:?}"
    );
    for entry in &charges {
        let named: Vec<&serde_json::Value> = usage
            .iter()
            .filter(|u| u["ledger_id"] == entry["id"])
            .collect();
        let took: BigDecimal = named.iter().map(|u| dec(u["cost"].as_str().unwrap())).sum();
        assert_eq!(-dec(entry["delta"].as_str().unwrap()), took, "{entry}");
        let note = (named.len() > 1).then(|| format!("{} calls settled together", named.len()));
        assert_eq!(entry["note"].as_str().map(str::to_owned), note, "{entry}");
        assert!(
            named.iter().any(|u| u["request_id"] == entry["reference"]),
            "an entry's reference is one of the calls it took: {entry}"
        );
    }
    assert!(
        usage
            .iter()
            .all(|u| charges.iter().any(|e| e["id"] == u["ledger_id"])),
        "a call naming no charge entry: {usage:?}"
    );
}

/// Every billing-worker down for longer than the hold TTL: the call's hold expires while its
/// charge waits in the queue. The sweeper keeps that hold until the queue is drained (the user
/// cannot spend the money meanwhile, and the charge is not cut down to what is left), and still
/// releases a hold whose charge never comes once it has seen the queue empty twice.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_hold_is_kept_while_charges_wait_in_the_queue() {
    use diesel_async::RunQueryDsl;

    let app = spawn_app().await;
    let setup = app
        .chat_setup(mock(MockConfig::default()).await, &[("good-key", 1)], "10")
        .await;
    app.send(
        Method::POST,
        "/v1/chat/completions",
        Credential::Bearer(&setup.access_key),
        Some(chat(&setup.model, "one two")),
    )
    .await
    .assert_status(200);
    // At a test's rate the charge is kept in the outbox first and then forwarded to the queue:
    // wait until it is only in the queue (the sweeper would settle it from the outbox).
    eventually(15, || async {
        (app.count("billing_outbox").await == 0).then_some(())
    })
    .await;
    let mut conn = app.pool.get().await.unwrap();
    diesel::sql_query(
        "UPDATE balance_holds SET expires_at = now() - interval '1 minute' WHERE user_id = $1",
    )
    .bind::<diesel::sql_types::BigInt, _>(setup.user_id)
    .execute(&mut conn)
    .await
    .unwrap();

    let broker = messaging::Broker::connect(app.settings.broker.clone())
        .await
        .unwrap();
    let mut sweeper = billing_worker::Sweeper::new(app.pool.clone(), broker.clone());
    for _ in 0..3 {
        let (released, _) = sweeper.pass().await.unwrap();
        assert_eq!(released, 0, "released while its charge waits in the queue");
    }
    assert_eq!(app.open_holds(setup.user_id).await, 1);

    let worker = BillingWorker::start(&app).await;
    let rows = eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 1).then_some(rows)
    })
    .await;
    worker.stop().await;
    assert_eq!(rows[0].2, expected_cost(2, 16));
    assert_eq!(
        app.balance_and_ledger_sum(setup.user_id).await.0,
        dec("10") - expected_cost(2, 16),
        "charged in full"
    );
    assert_eq!(app.open_holds(setup.user_id).await, 0);

    // A hold whose charge never comes (its gateway died mid-call).
    persistence::billing::place_hold(
        &mut conn,
        setup.user_id,
        uuid::Uuid::new_v4(),
        &Money::parse("1").unwrap(),
        0,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(sweeper.pass().await.unwrap().0, 0, "the first empty look");
    assert_eq!(sweeper.pass().await.unwrap().0, 1);
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_billing_message_charges_nothing_more() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let setup = app
        .chat_setup(mock(MockConfig::default()).await, &[("good-key", 1)], "10")
        .await;
    app.send(
        Method::POST,
        "/v1/chat/completions",
        Credential::Bearer(&setup.access_key),
        Some(chat(&setup.model, "a b c")),
    )
    .await
    .assert_status(200);
    eventually(10, || async {
        (app.usage_of(setup.user_id).await.len() == 1).then_some(())
    })
    .await;
    let after_first = app.balance_and_ledger_sum(setup.user_id).await.0;

    // Publish the very charge again, as a redelivery would.
    let request_id: uuid::Uuid = {
        use diesel::{ExpressionMethods, QueryDsl};
        use diesel_async::RunQueryDsl;
        use persistence::schema::usage_logs;
        let mut conn = app.pool.get().await.unwrap();
        usage_logs::table
            .filter(usage_logs::user_id.eq(setup.user_id))
            .select(usage_logs::request_id)
            .first(&mut conn)
            .await
            .unwrap()
    };
    let message = domain::BillingMessage {
        request_id,
        user_id: setup.user_id,
        access_key_id: None,
        model_id: 1,
        model_name: setup.model.clone(),
        usage: Usage {
            prompt_tokens: 3,
            completion_tokens: 16,
            ..Usage::default()
        },
        cost: Money::from_decimal_rounded(expected_cost(3, 16)).unwrap(),
        lease_id: None,
        occurred_at: chrono::Utc::now(),
    };
    let broker = messaging::Broker::connect(app.settings.broker.clone())
        .await
        .unwrap();
    for _ in 0..3 {
        broker
            .publish_json(
                messaging::BILLING_LOG_QUEUE,
                &message.to_json_bytes(),
                &request_id.to_string(),
            )
            .await
            .unwrap();
    }
    // A fresh call after the duplicates: once it is settled, the duplicates were consumed before it.
    app.send(
        Method::POST,
        "/v1/chat/completions",
        Credential::Bearer(&setup.access_key),
        Some(chat(&setup.model, "x")),
    )
    .await
    .assert_status(200);
    eventually(10, || async {
        (app.usage_of(setup.user_id).await.len() == 2).then_some(())
    })
    .await;
    let end = app.balance_and_ledger_sum(setup.user_id).await.0;
    assert_eq!(end, after_first - expected_cost(1, 16));
    app.assert_books_balance().await;
    broker.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_billing_batch_settles_each_charge_once_and_a_bad_charge_dead_letters_only_its_body() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let setup = app
        .chat_setup(mock(MockConfig::default()).await, &[("good-key", 1)], "10")
        .await;
    let charge = |user_id: i64, cost: &str| domain::BillingMessage {
        request_id: uuid::Uuid::new_v4(),
        user_id,
        access_key_id: None,
        model_id: 1,
        model_name: setup.model.clone(),
        usage: Usage {
            prompt_tokens: 1,
            completion_tokens: 1,
            ..Usage::default()
        },
        cost: Money::parse(cost).unwrap(),
        lease_id: None,
        occurred_at: chrono::Utc::now(),
    };
    let broker = messaging::Broker::connect(app.settings.broker.clone())
        .await
        .unwrap();
    let publish = |body: Vec<u8>| {
        let broker = &broker;
        async move {
            broker
                .publish_json(messaging::BILLING_LOG_QUEUE, &body, "test-batch")
                .await
                .unwrap()
        }
    };

    // A batch delivered twice (a redelivery): each of its charges is settled once.
    let batch = domain::BillingBatch {
        charges: vec![
            charge(setup.user_id, "0.001"),
            charge(setup.user_id, "0.002"),
        ],
    };
    publish(batch.to_json_bytes()).await;
    publish(batch.to_json_bytes()).await;
    eventually(10, || async {
        (app.usage_of(setup.user_id).await.len() == 2).then_some(())
    })
    .await;

    // A batch with a charge that can never settle (no such user): the good charge is settled,
    // the body goes to the dead-letter queue, and nothing is charged twice.
    let good = charge(setup.user_id, "0.004");
    let bad = charge(987_654_321, "0.5");
    publish(
        domain::BillingBatch {
            charges: vec![good, bad],
        }
        .to_json_bytes(),
    )
    .await;
    let dead_letters = app.settings.broker.queue_prefix.clone() + "billing_log_queue.dlq";
    eventually(10, || async {
        (app.queue_depth(&broker, &dead_letters).await == 1).then_some(())
    })
    .await;
    assert_eq!(app.usage_of(setup.user_id).await.len(), 3);
    let (balance, ledger) = app.balance_and_ledger_sum(setup.user_id).await;
    assert_eq!(balance, dec("9.993"));
    assert_eq!(balance, ledger);
    app.assert_books_balance().await;
    broker.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_broker_down_during_calls_no_charge_is_lost_and_none_doubled() {
    let mut outage = integration_tests::BrokerOutage::start().await;
    let app = outage.spawn_app_behind().await;
    let worker = BillingWorker::start(&app).await;
    let setup = app
        .chat_setup(mock(MockConfig::default()).await, &[("good-key", 1)], "10")
        .await;
    let call = || {
        app.send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&setup.access_key),
            Some(chat(&setup.model, "one two three")),
        )
    };

    for _ in 0..3 {
        call().await.assert_status(200);
    }
    eventually(10, || async {
        (app.usage_of(setup.user_id).await.len() == 3).then_some(())
    })
    .await;

    // The broker goes away: calls still succeed; their charges wait in the outbox.
    outage.cut().await;
    for _ in 0..10 {
        call().await.assert_status(200);
    }
    let metrics = app
        .send(
            Method::GET,
            "/metrics",
            Credential::Bearer(app.admin_token()),
            None,
        )
        .await;
    assert!(
        metrics
            .text
            .lines()
            .any(|l| l.starts_with("billing_published_total{path=\"outbox\"}")),
        "the outage's charges must have gone through the outbox"
    );
    // Back again: everything is settled exactly once (outbox by the sweeper, anything the
    // broker had taken by the consumer; the request id makes a double delivery harmless).
    outage.restore().await;
    let rows = eventually(30, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() >= 13).then_some(rows)
    })
    .await;
    app.billing_barrier().await;
    let rows_after = app.usage_of(setup.user_id).await;
    assert_eq!(rows_after.len(), 13, "every call billed once: {rows:?}");
    let billed: BigDecimal = rows_after.iter().map(|r| r.2.clone()).sum();
    assert_eq!(billed, expected_cost(3, 16) * BigDecimal::from(13));
    assert_eq!(
        app.balance_and_ledger_sum(setup.user_id).await.0,
        dec("10") - billed
    );
    assert_eq!(app.count("billing_outbox").await, 0);
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_during_a_plain_call_is_still_billed() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let slow = MockConfig {
        latency_ms: 800,
        ..MockConfig::default()
    };
    let setup = app
        .chat_setup(mock(slow).await, &[("good-key", 1)], "10")
        .await;
    let gave_up = app
        .client
        .post(format!("{}/v1/chat/completions", app.address))
        .bearer_auth(&setup.access_key)
        .timeout(std::time::Duration::from_millis(200))
        .json(&chat(&setup.model, "one two"))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client hung up before the answer");
    // The provider answered anyway; that answer is billed, and the hold closed.
    let rows = eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 1).then_some(rows)
    })
    .await;
    assert_eq!(rows[0], (2, 16, expected_cost(2, 16)));
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_part_is_held_for_the_models_image_allowance() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    // Slow enough to read each call's hold while it is open.
    let slow = MockConfig {
        latency_ms: 400,
        ..MockConfig::default()
    };
    let setup = app
        .chat_setup(mock(slow).await, &[("good-key", 1)], "0.1")
        .await;
    let admin = app.admin_token().to_owned();
    let model_path = format!("/v1/admin/models/{}", setup.model_id);
    let mut body = chat(&setup.model, "what is in this picture?");
    body["messages"][0]["content"] = json!([
        {"type": "text", "text": "what is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    ]);
    let held_for = |body: Value| {
        let app = &app;
        let setup = &setup;
        async move {
            let call = app.send(
                Method::POST,
                "/v1/chat/completions",
                Credential::Bearer(&setup.access_key),
                Some(body),
            );
            let held = eventually(10, || open_hold_amount(app, setup.user_id));
            let (reply, held) = tokio::join!(call, held);
            reply.assert_status(200);
            eventually(10, || async {
                (app.open_holds(setup.user_id).await == 0).then_some(())
            })
            .await;
            held
        }
    };

    // The default allowance, then the one an admin set for a model that bills images as more
    // tokens: the hold grows by exactly the difference, priced at the input price.
    let default_hold = held_for(body.clone()).await;
    app.patch(&model_path, &admin, json!({"image_input_tokens": 36_835}))
        .await
        .assert_status(200);
    let larger_hold = held_for(body.clone()).await;
    let per_token = dec(INPUT_PER_MILLION) / dec("1000000");
    assert_eq!(
        larger_hold - default_hold,
        per_token * BigDecimal::from(36_835 - 1_600)
    );

    // An allowance the balance cannot cover refuses the call with nothing written; a call
    // without images is not affected.
    app.patch(
        &model_path,
        &admin,
        json!({"image_input_tokens": 1_000_000}),
    )
    .await
    .assert_status(200);
    let before = (
        app.count("balance_holds").await,
        app.usage_of(setup.user_id).await.len(),
    );
    app.send(
        Method::POST,
        "/v1/chat/completions",
        Credential::Bearer(&setup.access_key),
        Some(body),
    )
    .await
    .assert_error(402, "insufficient_balance");
    assert_eq!(
        (
            app.count("balance_holds").await,
            app.usage_of(setup.user_id).await.len()
        ),
        before
    );
    held_for(chat(&setup.model, "no picture")).await;
    app.assert_books_balance().await;
    worker.stop().await;
}

/// Reads the whole SSE body of a streaming call; answers (request id, body).
async fn stream_whole(app: &TestApp, access_key: &str, body: &Value) -> (String, String) {
    let response = app
        .client
        .post(format!("{}/v1/chat/completions", app.address))
        .bearer_auth(access_key)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    (request_id, response.text().await.unwrap())
}

/// Where a test finds the charges made durable so far.
enum Kept {
    /// `billing_log_queue` (no billing-worker runs, so they stay there).
    Queue(messaging::Broker, String),
    /// The Postgres outbox (the forwarding lingers longer than the test).
    Outbox,
}

impl Kept {
    async fn count(&self, app: &TestApp) -> i64 {
        match self {
            Kept::Queue(broker, queue) => i64::from(app.queue_depth(broker, queue).await),
            Kept::Outbox => app.count("billing_outbox").await,
        }
    }
}

/// Three plain calls and a stream; after each answer (a stream: its `[DONE]`), its charge is
/// already where `kept` looks, with nothing to wait for.
async fn each_charge_is_kept_before_its_answer_ends(app: &TestApp, setup: &ChatSetup, kept: &Kept) {
    for expected in 1..=3 {
        app.send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&setup.access_key),
            Some(chat(&setup.model, "one two")),
        )
        .await
        .assert_status(200);
        assert_eq!(
            kept.count(app).await,
            expected,
            "the charge was kept when the answer arrived"
        );
    }
    let mut body = chat(&setup.model, "stream it");
    body["stream"] = json!(true);
    let (_, text) = stream_whole(app, &setup.access_key, &body).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(kept.count(app).await, 4);
}

/// The charge is durable before the last byte of the answer. Above `calls.outbox_first_below`
/// calls per second (here: always) by broker group commit: in `billing_log_queue`.
#[tokio::test(flavor = "multi_thread")]
async fn a_calls_charge_is_in_the_queue_before_its_answer_ends() {
    let app = spawn_app_with(|s| s.calls.outbox_first_below = 0).await;
    let setup = app
        .chat_setup(mock(MockConfig::default()).await, &[("good-key", 1)], "10")
        .await;
    let broker = messaging::Broker::connect(app.settings.broker.clone())
        .await
        .unwrap();
    let queue = app.settings.broker.queue_prefix.clone() + "billing_log_queue";
    each_charge_is_kept_before_its_answer_ends(&app, &setup, &Kept::Queue(broker, queue)).await;
}

/// At a low rate (the default below 1500 calls per second) a call's charge is made durable in
/// the Postgres outbox before the answer ends, and forwarded to the broker afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn at_a_low_rate_a_calls_charge_is_in_the_outbox_before_its_answer_ends() {
    // Forwarding waits a minute for company, so the outbox shows every charge kept so far.
    let app = spawn_app_with(|s| s.calls.outbox_forward_linger_ms = 60_000).await;
    let setup = app
        .chat_setup(mock(MockConfig::default()).await, &[("good-key", 1)], "10")
        .await;
    each_charge_is_kept_before_its_answer_ends(&app, &setup, &Kept::Outbox).await;
    // Billing-worker's sweep settles what is in the outbox, each charge once.
    let worker = BillingWorker::start(&app).await;
    let rows = eventually(30, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 4).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 4);
    app.assert_books_balance().await;
    worker.stop().await;
}

/// The provider accepted the call, so it is billed even if the client leaves before the
/// first token: the provider's stream is read to its end and its usage billed.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_the_client_drops_before_its_first_token_is_billed() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let slow = MockConfig {
        stream_chunk_delay_ms: 20,
        completion_tokens: 30,
        ..MockConfig::default()
    };
    let setup = app
        .chat_setup(mock(slow).await, &[("good-key", 1)], "10")
        .await;
    let mut body = chat(&setup.model, "tell me a story");
    body["max_tokens"] = json!(30);
    body["stream"] = json!(true);
    app.stream_then_leave(&setup.access_key, &body, 0).await;
    let rows = eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 1).then_some(rows)
    })
    .await;
    let (prompt, completion, cost) = rows[0].clone();
    assert!(prompt > 0, "the prompt is billed");
    assert_eq!(completion, 30, "and what the provider went on generating");
    assert_eq!(cost, expected_cost(prompt as u64, completion as u64));
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    worker.stop().await;
}

/// A client that stops reading keeps its connection open, but not its call: the call ends by
/// its deadline (`upstream.total_timeout_ms`, below the hold's lifetime), is billed for what
/// was generated by then, and its hold is closed while the client still holds on.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_cannot_outlive_the_calls_deadline() {
    let app = spawn_app_with(|s| {
        s.upstream.first_byte_timeout_ms = 1_000;
        s.upstream.total_timeout_ms = 1_500;
    })
    .await;
    let worker = BillingWorker::start(&app).await;
    let slow = MockConfig {
        stream_chunk_delay_ms: 100,
        completion_tokens: 100, // 10 s of streaming
        ..MockConfig::default()
    };
    let setup = app
        .chat_setup(mock(slow).await, &[("good-key", 1)], "10")
        .await;
    let mut body = chat(&setup.model, "a very long story");
    body["max_tokens"] = json!(100);
    body["stream"] = json!(true);
    let unread = app
        .client
        .post(format!("{}/v1/chat/completions", app.address))
        .bearer_auth(&setup.access_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(unread.status(), 200);
    let rows = eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 1).then_some(rows)
    })
    .await;
    let (prompt, completion, cost) = rows[0].clone();
    assert!(
        (1..100).contains(&completion),
        "billed {completion} tokens: what was generated by the deadline"
    );
    assert_eq!(cost, expected_cost(prompt as u64, completion as u64));
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    // The client, reading now, finds its answer broken off, not complete.
    let text = unread.text().await.unwrap_or_default();
    assert!(
        !text.contains("[DONE]"),
        "a cut stream does not look complete"
    );
    app.assert_books_balance().await;
    worker.stop().await;
}

/// Inputs the hold cannot count are refused with the field named, before anything is held.
#[tokio::test(flavor = "multi_thread")]
async fn each_unpriceable_input_is_refused_with_its_field_named() {
    let app = spawn_app().await;
    let setup = app
        .chat_setup(mock(MockConfig::default()).await, &[("good-key", 1)], "10")
        .await;
    let user = |content: Value| json!([{"role": "user", "content": content}]);
    let cases = [
        (
            "messages[0].content[0].type",
            json!({"messages": user(json!([{"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}}]))}),
        ),
        (
            "messages[0].content[1].type",
            json!({"messages": user(json!([{"type": "text", "text": "hear"}, {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]))}),
        ),
        (
            "prediction",
            json!({"messages": user(json!("x")), "prediction": {"type": "content", "content": "long"}}),
        ),
        (
            "service_tier",
            json!({"messages": user(json!("x")), "service_tier": "priority"}),
        ),
        (
            "modalities",
            json!({"messages": user(json!("x")), "modalities": ["text", "audio"], "audio": null}),
        ),
        (
            "audio",
            json!({"messages": user(json!("x")), "audio": {"voice": "alloy", "format": "mp3"}}),
        ),
        (
            "web_search_options",
            json!({"messages": user(json!("x")), "web_search_options": {}}),
        ),
        (
            "tools[0].type",
            json!({"messages": user(json!("x")), "tools": [{"type": "web_search_preview"}]}),
        ),
    ];
    let before = app.snapshot().await;
    for (field, mut body) in cases {
        body["model"] = json!(setup.model);
        let reply = app
            .send(
                Method::POST,
                "/v1/chat/completions",
                Credential::Bearer(&setup.access_key),
                Some(body),
            )
            .await;
        reply.assert_error(400, "invalid_request");
        let message = reply.json["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(field), "{message:?} names {field}");
    }
    assert_eq!(app.snapshot().await, before, "nothing was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn model_call_answers_are_not_compressed_while_the_other_answers_are() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let setup = app.mock_setup("openai").await;
    // What OpenAI's and Anthropic's SDKs send (httpx, undici).
    let accepting =
        |request: reqwest::RequestBuilder| request.header("accept-encoding", "gzip, deflate");
    let post = |path: &str, body: Value| {
        accepting(
            app.client
                .post(format!("{}{path}", app.address))
                .bearer_auth(&setup.access_key)
                .header("x-api-key", &setup.access_key)
                .json(&body),
        )
        .send()
    };
    let calls = [
        (
            "/v1/chat/completions",
            json!({"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "demo-chat", "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/responses",
            json!({"model": "demo-chat", "input": "hi"}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "demo-embed", "input": "hi"}),
        ),
        (
            "/v1/messages",
            json!({"model": "demo-chat", "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ];
    for (path, body) in &calls {
        let response = post(path, body.clone()).await.unwrap();
        assert_eq!(response.status(), 200, "{path} {body}");
        assert!(
            response.headers().get("content-encoding").is_none(),
            "{path} {body}: {:?}",
            response.headers()
        );
        let text = response.text().await.unwrap();
        assert!(
            serde_json::from_str::<Value>(&text).is_ok() || text.contains("data: "),
            "{path}: {text}"
        );
    }
    // The rest is compressed for a client that accepts it.
    for path in ["/v1/admin/users", "/openapi.json"] {
        let response = accepting(
            app.client
                .get(format!("{}{path}", app.address))
                .bearer_auth(app.admin_token()),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers().get("content-encoding").unwrap(),
            "gzip",
            "{path}"
        );
    }
    let rows = eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == calls.len()).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), calls.len());
    app.assert_books_balance().await;
    worker.stop().await;
}
