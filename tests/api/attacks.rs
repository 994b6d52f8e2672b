//! The auth attack table: every forged, missing or misplaced credential on every kind of route,
//! and one user's ids in another user's hands. All refused, with the right status, and nothing
//! written. Then one balance spent from many keys at once: never an overdraft.

use chrono::Utc;
use integration_tests::{BillingWorker, Credential, eventually, spawn_app};
use mock_llm::MockConfig;
use reqwest::Method;
use serde_json::{Value, json};

const SECRET: &str = "test-jwt-secret-that-is-long-enough-0123456789";

fn unsigned(sub: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64.encode(
        json!({"sub": sub, "role": "admin", "exp": Utc::now().timestamp() + 3600, "iss": "ai-gateway"})
            .to_string(),
    );
    format!("{header}.{payload}.")
}

/// Routes that take a session token, with a body that would be valid for an admin.
fn token_routes(order_no: &str) -> Vec<(Method, String, Option<Value>, bool)> {
    let admin = true;
    vec![
        (Method::GET, "/v1/me".into(), None, !admin),
        (
            Method::POST,
            "/v1/me/access-keys".into(),
            Some(json!({"name": "x"})),
            !admin,
        ),
        (Method::GET, "/v1/me/access-keys".into(), None, !admin),
        (
            Method::POST,
            "/v1/me/orders".into(),
            Some(json!({"amount": "5"})),
            !admin,
        ),
        (Method::GET, "/v1/me/usage".into(), None, !admin),
        (Method::GET, "/v1/me/ledger".into(), None, !admin),
        (Method::POST, "/v1/auth/logout".into(), None, !admin),
        (
            Method::POST,
            "/v1/auth/password".into(),
            Some(json!({"current_password": "password-123", "new_password": "password-456"})),
            !admin,
        ),
        (Method::GET, "/v1/admin/users".into(), None, admin),
        (
            Method::POST,
            "/v1/admin/users".into(),
            Some(json!({"email": "evil@example.com", "password": "password-123", "role": "admin"})),
            admin,
        ),
        (
            Method::PATCH,
            "/v1/admin/users/1".into(),
            Some(json!({"role": "user"})),
            admin,
        ),
        (
            Method::POST,
            "/v1/admin/users/2/balance-adjustments".into(),
            Some(json!({"amount": "1000", "reason": "free money"})),
            admin,
        ),
        (Method::GET, "/v1/admin/providers".into(), None, admin),
        (
            Method::POST,
            "/v1/admin/providers".into(),
            Some(json!({"name": "evil", "kind": "openai", "base_url": "http://8.8.8.8"})),
            admin,
        ),
        (Method::GET, "/v1/admin/usage-logs".into(), None, admin),
        (Method::GET, "/v1/admin/jobs".into(), None, admin),
        (
            Method::POST,
            format!("/v1/orders/{order_no}/complete"),
            Some(json!({})),
            admin,
        ),
        (Method::GET, "/metrics".into(), None, admin),
    ]
}

fn key_routes(model: &str) -> Vec<(Method, String, Option<Value>)> {
    let chat = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    vec![
        (Method::GET, "/v1/models".into(), None),
        (
            Method::POST,
            "/v1/chat/completions".into(),
            Some(chat.clone()),
        ),
        (Method::POST, "/v1/chat".into(), Some(chat)),
        (
            Method::POST,
            "/v1/jobs/image-generation".into(),
            Some(json!({"model": "demo-image", "prompt": "x"})),
        ),
        (Method::GET, "/v1/jobs".into(), None),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_forged_missing_or_misplaced_credential_is_refused_and_writes_nothing() {
    let app = spawn_app().await;
    let mock = mock_llm::start(MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap();
    let setup = app.chat_setup(mock, &[("good-key", 1)], "5").await;
    let (_, user_token) = app.new_user().await;
    let order = app
        .post("/v1/me/orders", &setup.token, json!({"amount": "3"}))
        .await;
    let order_no = order.assert_status(201)["order_no"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin_sub = "1";
    let bad_tokens = [
        ("garbage", "garbage".to_owned()),
        (
            "expired",
            integration_tests::forge_token(
                SECRET,
                jsonwebtoken::Algorithm::HS256,
                admin_sub,
                -3600,
            ),
        ),
        (
            "wrong signature",
            integration_tests::forge_token(
                "another-secret-another-secret-another",
                jsonwebtoken::Algorithm::HS256,
                admin_sub,
                3600,
            ),
        ),
        (
            "HS512",
            integration_tests::forge_token(SECRET, jsonwebtoken::Algorithm::HS512, admin_sub, 3600),
        ),
        ("alg none", unsigned(admin_sub)),
        ("an access key", setup.access_key.clone()),
    ];
    let before = app.snapshot().await;
    let mut refused = 0;

    for (method, path, body, admin_only) in token_routes(&order_no) {
        let none = app
            .send(method.clone(), &path, Credential::None, body.clone())
            .await;
        none.assert_error(401, "unauthorized");
        refused += 1;
        for (what, token) in &bad_tokens {
            let reply = app
                .send(
                    method.clone(),
                    &path,
                    Credential::Bearer(token),
                    body.clone(),
                )
                .await;
            assert_eq!(
                reply.status, 401,
                "{what} on {method} {path}: {}",
                reply.text
            );
            reply.assert_error(401, "unauthorized");
            refused += 1;
        }
        if admin_only {
            app.send(
                method.clone(),
                &path,
                Credential::Bearer(&user_token),
                body.clone(),
            )
            .await
            .assert_error(403, "forbidden");
            refused += 1;
        }
    }
    let random_key = format!("sk-{}", uuid::Uuid::new_v4().simple());
    for (method, path, body) in key_routes(&setup.model) {
        for (what, credential) in [
            ("no key", Credential::None),
            ("a session token", Credential::Bearer(&user_token)),
            ("an admin token", Credential::Bearer(app.admin_token())),
            ("a random key", Credential::Bearer(&random_key)),
            (
                "a random key header",
                Credential::AccessKeyHeader(&random_key),
            ),
            ("garbage", Credential::Bearer("sk-")),
        ] {
            let reply = app
                .send(method.clone(), &path, credential, body.clone())
                .await;
            assert_eq!(
                reply.status, 401,
                "{what} on {method} {path}: {}",
                reply.text
            );
            refused += 1;
        }
    }
    assert_eq!(app.snapshot().await, before, "a refused request wrote");
    assert_eq!(
        app.count("users").await,
        before.iter().find(|(t, _)| t == "users").unwrap().1
    );
    println!("attack table: {refused} requests refused, nothing written");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_users_job_order_key_and_usage_are_out_of_reach() {
    let app = spawn_app().await;
    let _billing = BillingWorker::start(&app).await;
    let mock = mock_llm::start(MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap();
    let victim = app.chat_setup(mock, &[("good-key", 1)], "5").await;
    // The victim's job, order, key and usage.
    let job = app
        .send(
            Method::POST,
            "/v1/jobs/image-generation",
            Credential::Bearer(&victim.access_key),
            Some(json!({"model": "demo-image", "prompt": "x"})),
        )
        .await;
    let job_id = job.assert_status(202)["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let order = app
        .post("/v1/me/orders", &victim.token, json!({"amount": "3"}))
        .await;
    let order_no = order.assert_status(201)["order_no"]
        .as_str()
        .unwrap()
        .to_owned();
    let keys = app.get("/v1/me/access-keys", &victim.token).await;
    let key_id = keys.assert_status(200)["data"][0]["id"].as_i64().unwrap();
    app.send(
        Method::POST,
        "/v1/chat/completions",
        Credential::Bearer(&victim.access_key),
        Some(json!({"model": victim.model, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await
    .assert_status(200);
    eventually(15, || async {
        (app.usage_of(victim.user_id).await.len() == 1).then_some(())
    })
    .await;

    let (_, thief_token) = app.new_user().await;
    let thief_key = app
        .post("/v1/me/access-keys", &thief_token, json!({"name": "t"}))
        .await
        .assert_status(201)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = app.snapshot().await;
    app.send(
        Method::GET,
        &format!("/v1/jobs/{job_id}"),
        Credential::Bearer(&thief_key),
        None,
    )
    .await
    .assert_error(404, "not_found");
    let jobs = app
        .send(
            Method::GET,
            "/v1/jobs",
            Credential::Bearer(&thief_key),
            None,
        )
        .await;
    assert_eq!(jobs.assert_status(200)["total"], 0);
    app.delete(&format!("/v1/me/access-keys/{key_id}"), &thief_token)
        .await
        .assert_error(404, "not_found");
    app.post(
        &format!("/v1/orders/{order_no}/complete"),
        &thief_token,
        json!({}),
    )
    .await
    .assert_error(403, "forbidden");
    for list in [
        "/v1/me/orders",
        "/v1/me/usage",
        "/v1/me/ledger",
        "/v1/me/access-keys",
    ] {
        let reply = app.get(list, &thief_token).await;
        let data = reply.assert_status(200)["data"].as_array().unwrap();
        // Only the thief's own key; nothing of the victim's.
        assert!(
            data.iter()
                .all(|row| row["id"] != key_id || list != "/v1/me/access-keys"),
            "{list}: {}",
            reply.text
        );
        assert!(!reply.text.contains(&order_no), "{list} leaks the order");
        if list != "/v1/me/access-keys" {
            assert!(data.is_empty(), "{list}: {}", reply.text);
        }
    }
    // Filters naming the victim are not honoured on the user's routes.
    let filtered = app
        .get(
            &format!("/v1/me/usage?user_id={}", victim.user_id),
            &thief_token,
        )
        .await;
    assert!(
        filtered.status == 400 || filtered.json["data"].as_array().is_some_and(Vec::is_empty),
        "{}",
        filtered.text
    );
    assert_eq!(app.snapshot().await, before, "a refused request wrote");
    // The victim's key still works: revoking it failed.
    app.send(
        Method::GET,
        "/v1/models",
        Credential::Bearer(&victim.access_key),
        None,
    )
    .await
    .assert_status(200);
}

/// One balance, many keys, many calls at once: the calls admitted never cost more than the
/// balance, whichever key they came through.
#[tokio::test(flavor = "multi_thread")]
async fn one_balance_spent_from_many_keys_at_once_never_overdraws() {
    let app = spawn_app().await;
    let _billing = BillingWorker::start(&app).await;
    let mock = mock_llm::start(MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap();
    let setup = app.chat_setup(mock, &[("good-key", 1)], "0.0001").await;
    let mut keys = vec![setup.access_key.clone()];
    for i in 0..7 {
        let key = app
            .post(
                "/v1/me/access-keys",
                &setup.token,
                json!({"name": format!("k{i}")}),
            )
            .await;
        keys.push(key.assert_status(201)["key"].as_str().unwrap().to_owned());
    }
    let body = json!({"model": setup.model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]});
    let calls = (0..160).map(|i| {
        let (app, key, body) = (&app, keys[i % keys.len()].clone(), body.clone());
        async move {
            app.send(
                Method::POST,
                "/v1/chat/completions",
                Credential::Bearer(&key),
                Some(body),
            )
            .await
            .status
            .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(calls).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!(admitted + refused, statuses.len(), "{statuses:?}");
    assert!(
        admitted > 0 && refused > 0,
        "admitted {admitted}, refused {refused}"
    );
    let usage = eventually(20, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == admitted).then_some(rows)
    })
    .await;
    let (balance, ledger_sum) = app.balance_and_ledger_sum(setup.user_id).await;
    assert!(
        !bigdecimal::Signed::is_negative(&balance),
        "overdraft: {balance}"
    );
    assert_eq!(balance, ledger_sum);
    app.assert_books_balance().await;
    println!(
        "many keys: 160 calls over {} keys, {admitted} admitted, {refused} refused (402), {} usage rows, balance {balance}",
        keys.len(),
        usage.len()
    );
}
