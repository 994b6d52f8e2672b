//! A gateway-api process killed with SIGKILL under load: every call it answered in full is
//! billed (its charge was durable before the answer's last byte), none twice, and the books
//! balance.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel_async::RunQueryDsl;
use integration_tests::{BillingWorker, eventually, spawn_app, spawn_gateway_process};
use mock_llm::MockConfig;
use serde_json::json;

#[derive(diesel::QueryableByName)]
struct KeyRows {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    access_key_id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// One client: calls through `address` with `key`, plain and streaming in turn, until the
/// gateway is gone; answers how many calls it got back complete (a stream counts only if its
/// final `data: [DONE]` arrived).
async fn client(address: String, key: String, model: String, killed: Arc<AtomicBool>) -> u64 {
    let http = reqwest::Client::new();
    let mut answered = 0;
    for i in 0.. {
        let stream = i % 2 == 1;
        let body = json!({"model": model, "messages": [{"role": "user", "content": "count to ten"}],
                          "max_tokens": 16, "stream": stream});
        let reply = http
            .post(format!("{address}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let complete = match reply {
            Ok(response) if response.status() == 200 => match response.text().await {
                Ok(text) => !stream || text.ends_with("data: [DONE]\n\n"),
                Err(_) => false,
            },
            _ => false,
        };
        if complete {
            answered += 1;
        } else if AtomicBool::load(&killed, Ordering::SeqCst) {
            break;
        }
    }
    answered
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_under_load_loses_no_answered_call() {
    let app = spawn_app().await;
    let billing = BillingWorker::start(&app).await;
    let mock = mock_llm::start(
        MockConfig {
            latency_ms: 5,
            stream_chunk_delay_ms: 2,
            completion_tokens: 8,
            ..MockConfig::default()
        },
        "127.0.0.1",
        0,
    )
    .await
    .unwrap();
    let setup = app.chat_setup(mock, &[("good-key", 1)], "100").await;
    let mut keys = vec![setup.access_key.clone()];
    for _ in 1..8 {
        let key = app
            .post(
                "/v1/me/access-keys",
                &setup.token,
                json!({"name": "client"}),
            )
            .await;
        keys.push(key.assert_status(201)["key"].as_str().unwrap().to_owned());
    }
    let (mut gateway, address) = spawn_gateway_process(&app).await;

    let killed = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = keys
        .iter()
        .map(|key| {
            tokio::spawn(client(
                address.clone(),
                key.clone(),
                setup.model.clone(),
                Arc::clone(&killed),
            ))
        })
        .collect();
    // Kill it once it is busy: calls in flight at every stage, some answered a moment ago.
    eventually(20, || async {
        let mut conn = app.pool.get().await.unwrap();
        let settled: Count = diesel::sql_query("SELECT count(*) AS n FROM usage_logs")
            .get_result(&mut conn)
            .await
            .unwrap();
        (settled.n >= 100).then_some(())
    })
    .await;
    gateway.kill().unwrap(); // SIGKILL
    killed.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || gateway.wait()).await;
    let mut answered = Vec::new();
    for client in clients {
        answered.push(client.await.unwrap());
    }
    let total: u64 = answered.iter().sum();
    assert!(total >= 100, "only {total} calls answered before the kill");

    // Each key's usage rows cover its answered calls (a call cut off by the kill may be billed
    // too: the provider did the work).
    let key_ids: Vec<i64> = {
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            id: i64,
        }
        let mut conn = app.pool.get().await.unwrap();
        let rows: Vec<Id> =
            diesel::sql_query("SELECT id FROM access_keys WHERE user_id = $1 ORDER BY id")
                .bind::<diesel::sql_types::BigInt, _>(setup.user_id)
                .load(&mut conn)
                .await
                .unwrap();
        rows.into_iter().map(|r| r.id).collect()
    };
    assert_eq!(key_ids.len(), keys.len());
    let lost = || async {
        let mut conn = app.pool.get().await.unwrap();
        let rows: Vec<KeyRows> = diesel::sql_query(
            "SELECT access_key_id, count(*) AS n FROM usage_logs WHERE user_id = $1 \
             GROUP BY access_key_id",
        )
        .bind::<diesel::sql_types::BigInt, _>(setup.user_id)
        .load(&mut conn)
        .await
        .unwrap();
        // Keys were created in order, so key i has the i-th id.
        key_ids
            .iter()
            .zip(&answered)
            .map(|(id, answered)| {
                let billed = rows
                    .iter()
                    .find(|r| r.access_key_id == *id)
                    .map_or(0, |r| r.n as u64);
                answered.saturating_sub(billed)
            })
            .sum::<u64>()
    };
    // Poll until billing-worker has settled everything that was made durable.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut missing = lost().await;
    while missing > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        missing = lost().await;
    }
    assert_eq!(
        missing, 0,
        "answered calls without a usage row; answered per key: {answered:?}"
    );
    let mut conn = app.pool.get().await.unwrap();
    let doubled: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM (SELECT reference FROM balance_ledger WHERE kind = 'charge' \
         GROUP BY reference HAVING count(*) > 1) d",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(doubled.n, 0, "a charge was applied twice");
    app.assert_books_balance().await;
    billing.stop().await;
}
