use std::collections::HashSet;

use bigdecimal::BigDecimal;
use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use integration_tests::{Credential, PAYMENT_SECRET, eventually, spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::json;
use std::str::FromStr;

fn dec(s: &str) -> BigDecimal {
    BigDecimal::from_str(s).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn order_lifecycle_credits_once_with_a_ledger_row() {
    let app = spawn_app().await;
    let (user_id, token) = app.new_user().await;

    let created = app
        .post("/v1/me/orders", &token, json!({"amount": "25.50"}))
        .await;
    let order = created.assert_status(201).clone();
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["amount"], "25.5");
    assert_eq!(order["user_id"], user_id);
    let order_no = order["order_no"].as_str().unwrap();
    assert!(
        order_no.starts_with("ord_") && order_no.len() == 36,
        "{order_no}"
    );

    let done = app
        .post(
            &format!("/v1/orders/{order_no}/complete"),
            app.admin_token(),
            json!({}),
        )
        .await;
    assert_eq!(done.assert_status(200)["status"], "COMPLETED");
    let me = app.get("/v1/me", &token).await;
    assert_eq!(me.json["balance"], "25.5");

    // A second completion changes nothing.
    app.post(
        &format!("/v1/orders/{order_no}/complete"),
        app.admin_token(),
        json!({}),
    )
    .await
    .assert_error(409, "conflict");
    assert_eq!(app.get("/v1/me", &token).await.json["balance"], "25.5");
    app.post(
        "/v1/orders/ord_00000000000000000000000000000000/complete",
        app.admin_token(),
        json!({}),
    )
    .await
    .assert_error(404, "not_found");

    let ledger = app.get("/v1/me/ledger", &token).await;
    let ledger = ledger.assert_status(200);
    assert_eq!(ledger["total"], 1);
    assert_eq!(ledger["data"][0]["kind"], "topup");
    assert_eq!(ledger["data"][0]["delta"], "25.5");
    assert_eq!(ledger["data"][0]["balance_after"], "25.5");
    assert_eq!(ledger["data"][0]["reference"], order_no);

    let (balance, sum) = app.balance_and_ledger_sum(user_id).await;
    assert_eq!(balance, dec("25.5"));
    assert_eq!(balance, sum);
}

#[tokio::test(flavor = "multi_thread")]
async fn order_numbers_are_unique_and_not_sequential() {
    let app = spawn_app().await;
    let (_, token) = app.new_user().await;
    let mut seen = HashSet::new();
    let mut previous: Option<u128> = None;
    let mut increasing = 0;
    for _ in 0..20 {
        let reply = app
            .post("/v1/me/orders", &token, json!({"amount": "1"}))
            .await;
        let no = reply.assert_status(201)["order_no"]
            .as_str()
            .unwrap()
            .to_owned();
        let value = u128::from_str_radix(&no[4..], 16).unwrap();
        if previous.is_some_and(|p| value > p) {
            increasing += 1;
        }
        previous = Some(value);
        assert!(seen.insert(no));
    }
    // Random numbers go up about half the time; a counter or a clock would always go up.
    assert!(increasing < 19, "order numbers look sequential");
}

#[tokio::test(flavor = "multi_thread")]
async fn users_see_only_their_own_orders_and_cannot_complete_them() {
    let app = spawn_app().await;
    let (alice_id, alice) = app.new_user().await;
    let (_, bob) = app.new_user().await;
    let order = app
        .post("/v1/me/orders", &alice, json!({"amount": "5"}))
        .await;
    let order_no = order.assert_status(201)["order_no"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post("/v1/me/orders", &bob, json!({"amount": "7"}))
        .await
        .assert_status(201);

    let alice_orders = app.get("/v1/me/orders", &alice).await;
    assert_eq!(alice_orders.assert_status(200)["total"], 1);
    assert_eq!(alice_orders.json["data"][0]["order_no"], order_no.as_str());
    let bob_orders = app.get("/v1/me/orders", &bob).await;
    assert_eq!(bob_orders.json["total"], 1);
    assert_ne!(bob_orders.json["data"][0]["order_no"], order_no.as_str());

    // Neither the owner nor another user may complete an order: only an admin.
    app.post(
        &format!("/v1/orders/{order_no}/complete"),
        &alice,
        json!({}),
    )
    .await
    .assert_error(403, "forbidden");
    app.post(&format!("/v1/orders/{order_no}/complete"), &bob, json!({}))
        .await
        .assert_error(403, "forbidden");
    let (balance, _) = app.balance_and_ledger_sum(alice_id).await;
    assert_eq!(balance, dec("0"));

    let all = app
        .get(
            &format!("/v1/admin/orders?user_id={alice_id}"),
            app.admin_token(),
        )
        .await;
    assert_eq!(all.assert_status(200)["total"], 1);
    let everything = app.get("/v1/admin/orders", app.admin_token()).await;
    assert_eq!(everything.assert_status(200)["total"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_completions_credit_exactly_once() {
    let app = spawn_app().await;
    let (user_id, token) = app.new_user().await;
    let order = app
        .post("/v1/me/orders", &token, json!({"amount": "42.42"}))
        .await;
    let order_no = order.assert_status(201)["order_no"]
        .as_str()
        .unwrap()
        .to_owned();

    let path = format!("/v1/orders/{order_no}/complete");
    let attempts = (0..20).map(|_| app.post(&path, app.admin_token(), json!({})));
    let replies = futures_util::future::join_all(attempts).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let conflicts = replies.iter().filter(|r| r.status == 409).count();
    assert_eq!(ok, 1, "exactly one completion succeeds");
    assert_eq!(conflicts, 19, "every other completion is a conflict");
    for reply in replies.iter().filter(|r| r.status == 409) {
        reply.assert_error(409, "conflict");
    }

    let (balance, sum) = app.balance_and_ledger_sum(user_id).await;
    assert_eq!(balance, dec("42.42"));
    assert_eq!(balance, sum);
    assert_eq!(app.count("balance_ledger").await, 1);
}

fn signed(body: &str, at: i64) -> String {
    let signature = gateway_api::secrets::sign_payment(
        PAYMENT_SECRET.as_bytes(),
        &at.to_string(),
        body.as_bytes(),
    );
    format!("t={at},v1={signature}")
}

async fn callback(
    app: &integration_tests::TestApp,
    body: &str,
    signature: Option<String>,
) -> integration_tests::Reply {
    let mut request = app
        .client
        .post(format!("{}/v1/payments/callback", app.address))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("x-signature", signature);
    }
    integration_tests::TestApp::read(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn payment_callback_completes_once_and_refuses_forgeries_replays_and_wrong_amounts() {
    let app = spawn_app().await;
    let (user_id, token) = app.new_user().await;
    let order = app
        .post("/v1/me/orders", &token, json!({"amount": "30.00"}))
        .await;
    let order_no = order.assert_status(201)["order_no"]
        .as_str()
        .unwrap()
        .to_owned();
    let now = chrono::Utc::now().timestamp();
    let event = |id: &str, amount: &str, order: &str| {
        json!({"event_id": id, "order_no": order, "amount": amount, "status": "paid"}).to_string()
    };
    let before = app.snapshot().await;

    // Refused, writing nothing: no signature, wrong secret, body changed after signing,
    // stale or future timestamp, wrong amount, unknown order, unsupported status.
    let good = event("evt_1", "30", &order_no);
    callback(&app, &good, None)
        .await
        .assert_error(401, "unauthorized");
    let wrong_secret = gateway_api::secrets::sign_payment(
        b"not-the-secret-xxxxxx",
        &now.to_string(),
        good.as_bytes(),
    );
    callback(&app, &good, Some(format!("t={now},v1={wrong_secret}")))
        .await
        .assert_error(401, "unauthorized");
    callback(
        &app,
        &event("evt_1", "300", &order_no),
        Some(signed(&good, now)),
    )
    .await
    .assert_error(401, "unauthorized");
    callback(&app, &good, Some(signed(&good, now - 3600)))
        .await
        .assert_error(401, "unauthorized");
    callback(&app, &good, Some(signed(&good, now + 3600)))
        .await
        .assert_error(401, "unauthorized");
    let wrong_amount = event("evt_2", "29.99", &order_no);
    callback(&app, &wrong_amount, Some(signed(&wrong_amount, now)))
        .await
        .assert_error(409, "conflict");
    let unknown = event("evt_3", "30", "ord_ffffffffffffffffffffffffffffffff");
    callback(&app, &unknown, Some(signed(&unknown, now)))
        .await
        .assert_error(404, "not_found");
    let refunded =
        json!({"event_id": "evt_4", "order_no": order_no, "amount": "30", "status": "refunded"})
            .to_string();
    callback(&app, &refunded, Some(signed(&refunded, now)))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(app.snapshot().await, before);
    assert_eq!(app.balance_and_ledger_sum(user_id).await.0, dec("0"));

    // The real one completes the order.
    let done = callback(&app, &good, Some(signed(&good, now))).await;
    assert_eq!(done.assert_status(200)["status"], "COMPLETED");
    // The same signed request replayed, and a new event for the same order: both refused.
    callback(&app, &good, Some(signed(&good, now)))
        .await
        .assert_error(409, "conflict");
    let second = event("evt_5", "30", &order_no);
    callback(&app, &second, Some(signed(&second, now)))
        .await
        .assert_error(409, "conflict");
    // An admin completing it afterwards is refused too: one credit in all.
    app.post(
        &format!("/v1/orders/{order_no}/complete"),
        app.admin_token(),
        json!({}),
    )
    .await
    .assert_error(409, "conflict");

    let (balance, sum) = app.balance_and_ledger_sum(user_id).await;
    assert_eq!(balance, dec("30"));
    assert_eq!(balance, sum);
    assert_eq!(app.count("payment_events").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn access_keys_are_shown_once_listed_without_secret_and_revoked_at_once() {
    let app = spawn_app().await;
    let (_, alice) = app.new_user().await;
    let (_, bob) = app.new_user().await;

    let created = app
        .post("/v1/me/access-keys", &alice, json!({"name": "laptop"}))
        .await;
    let created = created.assert_status(201).clone();
    let secret = created["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sk-") && secret.len() >= 40);
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()));
    assert_eq!(created["revoked"], false);
    let id = created["id"].as_i64().unwrap();

    let list = app.get("/v1/me/access-keys", &alice).await;
    assert_eq!(list.assert_status(200)["total"], 1);
    assert!(
        !list.text.contains(&secret),
        "a list must never show the secret"
    );
    assert!(list.json["data"][0].get("key").is_none());
    assert_eq!(app.get("/v1/me/access-keys", &bob).await.json["total"], 0);

    // The database keeps only the SHA-256 of the secret and a short prefix.
    let row = app.access_key_row(id).await;
    assert_eq!(
        row.key_hash,
        gateway_api::secrets::hash_access_key(&secret).to_vec()
    );
    assert_eq!(row.prefix.len(), 11);

    // Both credential headers work for model calls; a session token does not.
    app.send(Method::GET, "/v1/models", Credential::Bearer(&secret), None)
        .await
        .assert_status(200);
    app.send(
        Method::GET,
        "/v1/models",
        Credential::AccessKeyHeader(&secret),
        None,
    )
    .await
    .assert_status(200);
    app.send(Method::GET, "/v1/models", Credential::Bearer(&alice), None)
        .await
        .assert_error(401, "unauthorized");
    app.send(Method::GET, "/v1/models", Credential::None, None)
        .await
        .assert_error(401, "unauthorized");
    let forged = format!("{}x", &secret[..secret.len() - 1]);
    app.send(Method::GET, "/v1/models", Credential::Bearer(&forged), None)
        .await
        .assert_error(401, "unauthorized");

    // Another user cannot revoke it (404, like an unknown key) and it keeps working.
    app.delete(&format!("/v1/me/access-keys/{id}"), &bob)
        .await
        .assert_error(404, "not_found");
    app.send(Method::GET, "/v1/models", Credential::Bearer(&secret), None)
        .await
        .assert_status(200);
    app.delete("/v1/me/access-keys/999999", &alice)
        .await
        .assert_error(404, "not_found");

    // Revocation takes effect on the very next call.
    app.delete(&format!("/v1/me/access-keys/{id}"), &alice)
        .await
        .assert_status(204);
    app.send(Method::GET, "/v1/models", Credential::Bearer(&secret), None)
        .await
        .assert_error(401, "unauthorized");
    let list = app.get("/v1/me/access-keys", &alice).await;
    assert_eq!(list.json["data"][0]["revoked"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_revoked_elsewhere_stops_working_within_the_key_cache_ttl() {
    const TTL_MS: u64 = 400;
    let app = spawn_app_with(|s| s.calls.key_cache_ttl_ms = TTL_MS).await;
    let (user_id, alice) = app.new_user().await;
    let key = |name: &'static str| {
        let app = &app;
        let alice = alice.clone();
        async move {
            let created = app
                .post("/v1/me/access-keys", &alice, json!({"name": name}))
                .await;
            let created = created.assert_status(201).clone();
            (
                created["id"].as_i64().unwrap(),
                created["key"].as_str().unwrap().to_owned(),
            )
        }
    };
    let models = |secret: String| {
        let app = &app;
        async move {
            app.send(Method::GET, "/v1/models", Credential::Bearer(&secret), None)
                .await
                .status
        }
    };

    // Revoked in Postgres directly, as another replica does it: this replica may still trust
    // the key it checked a moment ago, but for no longer than the TTL.
    let (id, secret) = key("laptop").await;
    assert_eq!(models(secret.clone()).await, 200);
    let mut conn = app.pool.get().await.unwrap();
    diesel::sql_query("UPDATE access_keys SET revoked_at = now() WHERE id = $1")
        .bind::<diesel::sql_types::BigInt, _>(id)
        .execute(&mut conn)
        .await
        .unwrap();
    let revoked = Instant::now();
    while models(secret.clone()).await == 200 {
        assert!(
            revoked.elapsed() < Duration::from_millis(TTL_MS + 250),
            "a revoked key still worked after the key cache TTL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(models(secret.clone()).await, 401);

    // Disabling the user through this replica takes effect on the very next call.
    let (_, second) = key("phone").await;
    assert_eq!(models(second.clone()).await, 200);
    app.patch(
        &format!("/v1/admin/users/{user_id}"),
        app.admin_token(),
        json!({"status": "disabled"}),
    )
    .await
    .assert_status(200);
    assert_eq!(models(second).await, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_keys_and_disabled_owners_are_refused() {
    let app = spawn_app().await;
    let (user_id, token) = app.new_user().await;
    app.post(
        "/v1/me/access-keys",
        &token,
        json!({"name": "old", "expires_at": "2020-01-01T00:00:00Z"}),
    )
    .await
    .assert_error(400, "invalid_request");
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let soon = expires_at.to_rfc3339();
    let short = app
        .post(
            "/v1/me/access-keys",
            &token,
            json!({"name": "short", "expires_at": soon}),
        )
        .await;
    let short_key = short.assert_status(201)["key"].as_str().unwrap().to_owned();
    let long = app
        .post("/v1/me/access-keys", &token, json!({"name": "long"}))
        .await;
    let long_key = long.assert_status(201)["key"].as_str().unwrap().to_owned();
    app.send(
        Method::GET,
        "/v1/models",
        Credential::Bearer(&short_key),
        None,
    )
    .await
    .assert_status(200);
    // The event is the clock passing the key's expiry: from then on it is refused at once.
    eventually(10, || async {
        (chrono::Utc::now() > expires_at).then_some(())
    })
    .await;
    app.send(
        Method::GET,
        "/v1/models",
        Credential::Bearer(&short_key),
        None,
    )
    .await
    .assert_error(401, "unauthorized");

    app.send(
        Method::GET,
        "/v1/models",
        Credential::Bearer(&long_key),
        None,
    )
    .await
    .assert_status(200);
    app.delete(&format!("/v1/admin/users/{user_id}"), app.admin_token())
        .await
        .assert_status(204);
    app.send(
        Method::GET,
        "/v1/models",
        Credential::Bearer(&long_key),
        None,
    )
    .await
    .assert_error(401, "unauthorized");
}
