//! The admin API: users, balance adjustments, providers, provider keys, models and the global lists.

use std::str::FromStr;

use bigdecimal::BigDecimal;
use diesel_async::RunQueryDsl;
use integration_tests::{ADMIN_EMAIL, Credential, TestApp, ids, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

fn dec(s: &str) -> BigDecimal {
    BigDecimal::from_str(s).unwrap()
}

async fn admin_id(app: &TestApp) -> i64 {
    app.get("/v1/me", app.admin_token())
        .await
        .assert_status(200)["id"]
        .as_i64()
        .unwrap()
}

/// Creates a user through the admin API and returns its body.
async fn create_user(app: &TestApp, email: &str, role: Option<&str>) -> Value {
    let mut body = json!({"email": email, "password": "password-123"});
    if let Some(role) = role {
        body["role"] = json!(role);
    }
    app.post("/v1/admin/users", app.admin_token(), body)
        .await
        .assert_status(201)
        .clone()
}

async fn create_provider(app: &TestApp, name: &str) -> i64 {
    let reply = app
        .post(
            "/v1/admin/providers",
            app.admin_token(),
            json!({"name": name, "kind": "openai", "base_url": "https://api.example.com/v1"}),
        )
        .await;
    reply.assert_status(201)["id"].as_i64().unwrap()
}

async fn create_chat_model(app: &TestApp, provider_id: i64, name: &str) -> Value {
    app.post(
        "/v1/admin/models",
        app.admin_token(),
        json!({
            "name": name,
            "provider_id": provider_id,
            "kind": "chat",
            "pricing": {"input_per_million": "0.15", "output_per_million": "0.60"},
        }),
    )
    .await
    .assert_status(201)
    .clone()
}

async fn adjust(
    app: &TestApp,
    user_id: i64,
    amount: Value,
    reason: &str,
) -> integration_tests::Reply {
    app.post(
        &format!("/v1/admin/users/{user_id}/balance-adjustments"),
        app.admin_token(),
        json!({"amount": amount, "reason": reason}),
    )
    .await
}

async fn assert_balance_matches_ledger(app: &TestApp, user_id: i64, expected: &str) {
    let (balance, sum) = app.balance_and_ledger_sum(user_id).await;
    assert_eq!(balance, dec(expected), "stored balance");
    assert_eq!(balance, sum, "balance must equal the sum of the ledger");
}

// ---- users

#[tokio::test(flavor = "multi_thread")]
async fn admin_lists_users_newest_first_with_pagination() {
    let app = spawn_app().await;
    let admin_id = admin_id(&app).await;
    let first = create_user(&app, "first@example.com", None).await;
    let second = create_user(&app, "Second@Example.com", Some("user")).await;
    let third = create_user(&app, "third@example.com", Some("admin")).await;

    assert_eq!(first["email"], "first@example.com");
    assert_eq!(first["role"], "user");
    assert_eq!(first["status"], "active");
    assert_eq!(first["balance"], "0");
    assert!(first["created_at"].is_string());
    assert!(first.get("password_hash").is_none(), "{first}");
    assert_eq!(second["email"], "second@example.com");
    assert_eq!(second["role"], "user");
    assert_eq!(third["role"], "admin");

    let all = app.get("/v1/admin/users", app.admin_token()).await;
    let all = all.assert_status(200);
    assert_eq!(all["total"], 4);
    assert_eq!(all["limit"], 50);
    assert_eq!(all["offset"], 0);
    let expected = vec![
        third["id"].as_i64().unwrap(),
        second["id"].as_i64().unwrap(),
        first["id"].as_i64().unwrap(),
        admin_id,
    ];
    assert_eq!(ids(all), expected, "newest first");
    assert_eq!(all["data"][3]["email"], ADMIN_EMAIL);
    for user in all["data"].as_array().unwrap() {
        assert!(user.get("password_hash").is_none(), "{user}");
    }

    let page = app
        .get("/v1/admin/users?limit=2&offset=1", app.admin_token())
        .await;
    let page = page.assert_status(200);
    assert_eq!(page["total"], 4);
    assert_eq!(page["limit"], 2);
    assert_eq!(page["offset"], 1);
    assert_eq!(ids(page), expected[1..3].to_vec());

    let last = app
        .get("/v1/admin/users?limit=200&offset=3", app.admin_token())
        .await;
    assert_eq!(ids(last.assert_status(200)), vec![admin_id]);
    let beyond = app
        .get("/v1/admin/users?offset=10", app.admin_token())
        .await;
    let beyond = beyond.assert_status(200);
    assert_eq!(beyond["total"], 4);
    assert_eq!(beyond["data"], json!([]));

    // The created admin is a working admin; the created users can log in.
    let third_token = app.login("third@example.com", "password-123").await;
    app.get("/v1/admin/users", &third_token)
        .await
        .assert_status(200);
    let first_token = app.login("first@example.com", "password-123").await;
    app.get("/v1/admin/users", &first_token)
        .await
        .assert_error(403, "forbidden");

    // Refused creations write nothing.
    let before = app.snapshot().await;
    let post = |body: Value| app.post("/v1/admin/users", app.admin_token(), body);
    post(json!({"email": "FIRST@example.com", "password": "password-123"}))
        .await
        .assert_error(409, "conflict");
    post(json!({"email": "x@example.com", "password": "password-123", "role": "root"}))
        .await
        .assert_error(400, "invalid_request");
    post(json!({"email": "x@example.com", "password": "short"}))
        .await
        .assert_error(400, "invalid_request");
    post(json!({"email": "not-an-email", "password": "password-123"}))
        .await
        .assert_error(400, "invalid_request");
    post(json!({"email": "x@example.com"}))
        .await
        .assert_error(400, "invalid_request");
    post(json!({"email": "x@example.com", "password": "password-123", "balance": "100"}))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_gets_patches_and_disables_users() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let user = create_user(&app, "pat@example.com", None).await;
    let id = user["id"].as_i64().unwrap();
    let path = format!("/v1/admin/users/{id}");

    let got = app.get(&path, admin).await;
    assert_eq!(got.assert_status(200), &user);

    // Password: the new one works, the old one no longer does.
    let patched = app
        .patch(&path, admin, json!({"password": "new-password-456"}))
        .await;
    assert_eq!(patched.assert_status(200)["id"], id);
    assert!(patched.json.get("password_hash").is_none());
    app.login("pat@example.com", "new-password-456").await;
    let old = app
        .send(
            Method::POST,
            "/v1/auth/login",
            Credential::None,
            Some(json!({"email": "pat@example.com", "password": "password-123"})),
        )
        .await;
    old.assert_error(401, "unauthorized");

    // Role.
    let promoted = app.patch(&path, admin, json!({"role": "admin"})).await;
    assert_eq!(promoted.assert_status(200)["role"], "admin");
    assert_eq!(app.get(&path, admin).await.json["role"], "admin");
    let demoted = app.patch(&path, admin, json!({"role": "user"})).await;
    assert_eq!(demoted.assert_status(200)["role"], "user");

    // Status by PATCH, both ways.
    let disabled = app.patch(&path, admin, json!({"status": "disabled"})).await;
    assert_eq!(disabled.assert_status(200)["status"], "disabled");
    let login = json!({"email": "pat@example.com", "password": "new-password-456"});
    app.send(
        Method::POST,
        "/v1/auth/login",
        Credential::None,
        Some(login.clone()),
    )
    .await
    .assert_error(401, "unauthorized");
    let enabled = app.patch(&path, admin, json!({"status": "active"})).await;
    assert_eq!(enabled.assert_status(200)["status"], "active");
    let token = app.login("pat@example.com", "new-password-456").await;

    // An empty patch changes nothing.
    let unchanged = app.patch(&path, admin, json!({})).await;
    assert_eq!(unchanged.assert_status(200)["status"], "active");
    assert_eq!(unchanged.json["role"], "user");

    // Refused patches write nothing and change nothing.
    let before = app.snapshot().await;
    for body in [
        json!({"role": "root"}),
        json!({"status": "banned"}),
        json!({"password": "short"}),
        json!({"password": "x".repeat(73)}),
        json!({"email": "other@example.com"}),
        json!({"balance": "1000"}),
        json!({"role": null, "extra": 1}),
    ] {
        app.patch(&path, admin, body)
            .await
            .assert_error(400, "invalid_request");
    }
    assert_eq!(app.snapshot().await, before);
    app.login("pat@example.com", "new-password-456").await;

    // DELETE disables: 204, the user is still listed (history stays), and their token stops working.
    let users_before = app.count("users").await;
    let deleted = app.delete(&path, admin).await;
    assert_eq!(deleted.status, 204);
    assert!(deleted.text.is_empty(), "{}", deleted.text);
    assert_eq!(app.count("users").await, users_before);
    assert_eq!(
        app.get(&path, admin).await.assert_status(200)["status"],
        "disabled"
    );
    let list = app.get("/v1/admin/users", admin).await;
    let listed = list.assert_status(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == id)
        .cloned()
        .unwrap();
    assert_eq!(listed["status"], "disabled");
    app.get("/v1/me", &token)
        .await
        .assert_error(401, "unauthorized");
    app.send(
        Method::POST,
        "/v1/auth/login",
        Credential::None,
        Some(login),
    )
    .await
    .assert_error(401, "unauthorized");

    // Unknown ids answer 404 on every user route, and write nothing.
    let before = app.snapshot().await;
    let unknown = "/v1/admin/users/987654321";
    app.get(unknown, admin).await.assert_error(404, "not_found");
    app.patch(unknown, admin, json!({"role": "admin"}))
        .await
        .assert_error(404, "not_found");
    app.patch(unknown, admin, json!({"password": "password-999"}))
        .await
        .assert_error(404, "not_found");
    app.delete(unknown, admin)
        .await
        .assert_error(404, "not_found");
    app.post(
        &format!("{unknown}/balance-adjustments"),
        admin,
        json!({"amount": "5", "reason": "nobody"}),
    )
    .await
    .assert_error(404, "not_found");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_cannot_disable_or_demote_themselves() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let me = format!("/v1/admin/users/{}", admin_id(&app).await);
    let before = app.snapshot().await;
    app.delete(&me, admin).await.assert_error(409, "conflict");
    app.patch(&me, admin, json!({"status": "disabled"}))
        .await
        .assert_error(409, "conflict");
    app.patch(&me, admin, json!({"role": "user"}))
        .await
        .assert_error(409, "conflict");
    app.patch(
        &me,
        admin,
        json!({"role": "user", "password": "another-password-1"}),
    )
    .await
    .assert_error(409, "conflict");
    assert_eq!(app.snapshot().await, before);
    // Nothing changed: still an active admin with the same password.
    let got = app.get(&me, admin).await;
    assert_eq!(got.assert_status(200)["role"], "admin");
    assert_eq!(got.json["status"], "active");
    app.login(ADMIN_EMAIL, integration_tests::ADMIN_PASSWORD)
        .await;
    // Harmless self-changes are allowed.
    let same = app
        .patch(&me, admin, json!({"role": "admin", "status": "active"}))
        .await;
    assert_eq!(same.assert_status(200)["role"], "admin");
}

// ---- balance adjustments

#[tokio::test(flavor = "multi_thread")]
async fn balance_adjustments_are_exact_and_all_or_nothing() {
    let app = spawn_app().await;
    let (user_id, token) = app.new_user().await;
    let admin_id = admin_id(&app).await;

    let credit = adjust(&app, user_id, json!("12.345"), "goodwill credit").await;
    let body = credit.assert_status(200);
    assert_eq!(body["user"]["id"], user_id);
    assert_eq!(body["user"]["balance"], "12.345");
    let entry = &body["ledger_entry"];
    assert_eq!(entry["user_id"], user_id);
    assert_eq!(entry["delta"], "12.345");
    assert_eq!(entry["balance_after"], "12.345");
    assert_eq!(entry["kind"], "adjustment");
    assert!(
        entry["reference"].as_str().is_some_and(|r| !r.is_empty()),
        "{entry}"
    );
    assert!(entry["id"].is_i64());
    assert_balance_matches_ledger(&app, user_id, "12.345").await;

    // A debit sent as a JSON number, parsed exactly.
    let debit = app
        .send_raw(
            Method::POST,
            &format!("/v1/admin/users/{user_id}/balance-adjustments"),
            Some(app.admin_token()),
            "application/json",
            br#"{"amount": -2.34500001, "reason": "correction"}"#.to_vec(),
        )
        .await;
    let body = debit.assert_status(200);
    assert_eq!(body["user"]["balance"], "9.99999999");
    assert_eq!(body["ledger_entry"]["delta"], "-2.34500001");
    assert_eq!(body["ledger_entry"]["balance_after"], "9.99999999");
    assert_balance_matches_ledger(&app, user_id, "9.99999999").await;
    assert_ne!(entry["reference"], body["ledger_entry"]["reference"]);

    // Below zero: 409 and nothing written.
    let before = app.snapshot().await;
    adjust(&app, user_id, json!("-10"), "too much")
        .await
        .assert_error(409, "conflict");
    adjust(&app, user_id, json!("-10.00000000"), "too much")
        .await
        .assert_error(409, "conflict");
    adjust(&app, user_id, json!("-9.99999999"), "exactly all")
        .await
        .assert_status(200);
    let after_all = app.snapshot().await;
    assert_ne!(after_all, before);
    assert_balance_matches_ledger(&app, user_id, "0").await;
    adjust(&app, user_id, json!("-0.00000001"), "one unit too much")
        .await
        .assert_error(409, "conflict");
    assert_eq!(app.snapshot().await, after_all);
    assert_balance_matches_ledger(&app, user_id, "0").await;

    // Bad requests: 400, nothing written.
    let before = app.snapshot().await;
    for amount in [json!("0"), json!("0.00000000"), json!("-0"), json!(0)] {
        adjust(&app, user_id, amount, "zero")
            .await
            .assert_error(400, "invalid_request");
    }
    let path = format!("/v1/admin/users/{user_id}/balance-adjustments");
    for body in [
        json!({"amount": "5"}),
        json!({"amount": "5", "reason": ""}),
        json!({"amount": "5", "reason": "   "}),
        json!({"amount": "5", "reason": "x".repeat(501)}),
        json!({"amount": "5", "reason": null}),
        json!({"reason": "no amount"}),
        json!({"amount": "abc", "reason": "bad"}),
        json!({"amount": "5", "reason": "extra", "kind": "topup"}),
        json!({"amount": "1000000000000000000", "reason": "out of range"}),
    ] {
        app.post(&path, app.admin_token(), body)
            .await
            .assert_error(400, "invalid_request");
    }
    assert_eq!(app.snapshot().await, before);
    assert_balance_matches_ledger(&app, user_id, "0").await;

    // The user sees the adjustments in their ledger, newest first, with the balance.
    let ledger = app.get("/v1/me/ledger", &token).await;
    let ledger = ledger.assert_status(200);
    assert_eq!(ledger["total"], 3);
    let deltas: Vec<&str> = ledger["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, vec!["-9.99999999", "-2.34500001", "12.345"]);
    assert_eq!(ledger["data"][0]["balance_after"], "0");
    assert_eq!(ledger["data"][2]["kind"], "adjustment");
    assert_eq!(app.get("/v1/me", &token).await.json["balance"], "0");

    // The adjustment records who made it and why.
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        actor_user_id: Option<i64>,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        note: Option<String>,
    }
    let mut conn = app.pool.get().await.unwrap();
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT actor_user_id, note FROM balance_ledger WHERE user_id = {user_id} ORDER BY id"
    ))
    .load(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.actor_user_id == Some(admin_id)));
    assert_eq!(rows[0].note.as_deref(), Some("goodwill credit"));
    assert_eq!(rows[1].note.as_deref(), Some("correction"));
}

// ---- providers

#[tokio::test(flavor = "multi_thread")]
async fn providers_crud_with_validation_and_conflicts() {
    let app = spawn_app().await;
    let admin = app.admin_token();

    let created = app
        .post(
            "/v1/admin/providers",
            admin,
            json!({"name": "openai-main", "kind": "openai", "base_url": "https://api.openai.com/v1"}),
        )
        .await;
    let provider = created.assert_status(201).clone();
    let id = provider["id"].as_i64().unwrap();
    assert_eq!(provider["name"], "openai-main");
    assert_eq!(provider["kind"], "openai");
    assert_eq!(provider["base_url"], "https://api.openai.com/v1");
    assert_eq!(provider["enabled"], true);
    assert!(provider["created_at"].is_string());
    let path = format!("/v1/admin/providers/{id}");
    assert_eq!(app.get(&path, admin).await.assert_status(200), &provider);

    let second = app
        .post(
            "/v1/admin/providers",
            admin,
            json!({"name": "local", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "enabled": false}),
        )
        .await;
    let second_id = second.assert_status(201)["id"].as_i64().unwrap();
    assert_eq!(second.json["enabled"], false);

    let list = app.get("/v1/admin/providers", admin).await;
    let list = list.assert_status(200);
    assert_eq!(list["total"], 2);
    assert_eq!(list["limit"], 50);
    assert_eq!(list["offset"], 0);
    assert_eq!(list["data"][0]["id"], second_id, "newest first");
    assert_eq!(list["data"][1]["id"], id);
    let page = app.get("/v1/admin/providers?limit=1&offset=1", admin).await;
    let page = page.assert_status(200);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["id"], id);
    assert_eq!(page["total"], 2);

    // Refused creations write nothing.
    let before = app.snapshot().await;
    let post = |body: Value| app.post("/v1/admin/providers", admin, body);
    post(json!({"name": "openai-main", "kind": "openai", "base_url": "https://other.example.com"}))
        .await
        .assert_error(409, "conflict");
    for body in [
        json!({"name": "p", "kind": "gemini", "base_url": "https://api.example.com"}),
        json!({"name": "p", "kind": "", "base_url": "https://api.example.com"}),
        json!({"name": "p", "kind": "openai", "base_url": "not a url"}),
        json!({"name": "p", "kind": "openai", "base_url": "ftp://api.example.com"}),
        json!({"name": "p", "kind": "openai", "base_url": "/v1"}),
        json!({"name": "p", "kind": "openai", "base_url": ""}),
        json!({"name": "", "kind": "openai", "base_url": "https://api.example.com"}),
        json!({"name": " padded ", "kind": "openai", "base_url": "https://api.example.com"}),
        json!({"kind": "openai", "base_url": "https://api.example.com"}),
        json!({"name": "p", "kind": "openai"}),
        json!({"name": "p", "kind": "openai", "base_url": "https://api.example.com", "api_key": "sk-x"}),
    ] {
        post(body).await.assert_error(400, "invalid_request");
    }
    assert_eq!(app.snapshot().await, before);

    // Patch.
    let patched = app
        .patch(
            &path,
            admin,
            json!({"name": "openai-renamed", "base_url": "https://proxy.example.com/v1", "enabled": false}),
        )
        .await;
    let patched = patched.assert_status(200);
    assert_eq!(patched["id"], id);
    assert_eq!(patched["name"], "openai-renamed");
    assert_eq!(patched["base_url"], "https://proxy.example.com/v1");
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["kind"], "openai");
    let got = app.get(&path, admin).await;
    assert_eq!(got.assert_status(200)["name"], "openai-renamed");
    assert_eq!(got.json["enabled"], false);

    let before = app.snapshot().await;
    app.patch(&path, admin, json!({"base_url": "javascript:alert(1)"}))
        .await
        .assert_error(400, "invalid_request");
    app.patch(&path, admin, json!({"kind": "other"}))
        .await
        .assert_error(400, "invalid_request");
    app.patch(&path, admin, json!({"name": "local"}))
        .await
        .assert_error(409, "conflict");
    app.patch(
        "/v1/admin/providers/987654321",
        admin,
        json!({"enabled": true}),
    )
    .await
    .assert_error(404, "not_found");
    app.get("/v1/admin/providers/987654321", admin)
        .await
        .assert_error(404, "not_found");
    app.delete("/v1/admin/providers/987654321", admin)
        .await
        .assert_error(404, "not_found");
    assert_eq!(app.snapshot().await, before);
    assert_eq!(app.get(&path, admin).await.json["name"], "openai-renamed");

    // A provider a model uses cannot be deleted; its keys and model stay.
    app.post(
        &format!("{path}/keys"),
        admin,
        json!({"api_key": "sk-upstream-0001"}),
    )
    .await
    .assert_status(201);
    let model = create_chat_model(&app, id, "gpt-test").await;
    let before = app.snapshot().await;
    app.delete(&path, admin).await.assert_error(409, "conflict");
    assert_eq!(app.snapshot().await, before);
    app.get(&path, admin).await.assert_status(200);

    // Once the model is gone, the provider and its keys go.
    let deleted = app
        .delete(&format!("/v1/admin/models/{}", model["id"]), admin)
        .await;
    assert_eq!(deleted.status, 204);
    let deleted = app.delete(&path, admin).await;
    assert_eq!(deleted.status, 204);
    assert!(deleted.text.is_empty());
    app.get(&path, admin).await.assert_error(404, "not_found");
    app.delete(&path, admin)
        .await
        .assert_error(404, "not_found");
    assert_eq!(app.count("provider_keys").await, 0);
    assert_eq!(app.count("providers").await, 1);
}

// ---- provider keys

#[tokio::test(flavor = "multi_thread")]
async fn provider_keys_show_a_hint_and_never_the_secret() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let provider_id = create_provider(&app, "upstream").await;
    let keys_path = format!("/v1/admin/providers/{provider_id}/keys");
    let secret = "sk-proj-UPSTREAMsecretVALUE-0123456789abcdefghij-WXYZ";
    // Pieces of the secret that must not appear either (besides the 4-char hint).
    let fragments = [
        "UPSTREAMsecretVALUE",
        "0123456789abcdefghij",
        "sk-proj-UPSTREAM",
    ];
    let assert_secret_absent = |text: &str| {
        assert!(!text.contains(secret), "the secret leaked: {text}");
        for fragment in fragments {
            assert!(
                !text.contains(fragment),
                "part of the secret leaked: {text}"
            );
        }
    };

    let created = app
        .post(
            &keys_path,
            admin,
            json!({"api_key": secret, "name": "primary"}),
        )
        .await;
    assert_secret_absent(&created.text);
    let key = created.assert_status(201).clone();
    let key_id = key["id"].as_i64().unwrap();
    assert_eq!(key["key_hint"], "WXYZ");
    assert_eq!(key["provider_id"], provider_id);
    assert_eq!(key["name"], "primary");
    assert_eq!(key["weight"], 1);
    assert_eq!(key["enabled"], true);
    assert!(key["created_at"].is_string());
    assert!(
        key.get("api_key").is_none() && key.get("secret").is_none(),
        "{key}"
    );

    let other = app
        .post(
            &keys_path,
            admin,
            json!({"api_key": "sk-second-key-abcd", "weight": 1000, "enabled": false}),
        )
        .await;
    let other_id = other.assert_status(201)["id"].as_i64().unwrap();
    assert_eq!(other.json["key_hint"], "abcd");
    assert_eq!(other.json["weight"], 1000);
    assert_eq!(other.json["enabled"], false);
    assert_eq!(other.json["name"], "");

    let list = app.get(&keys_path, admin).await;
    assert_secret_absent(&list.text);
    assert!(!list.text.contains("sk-second-key"), "{}", list.text);
    let list = list.assert_status(200);
    assert_eq!(list["total"], 2);
    assert_eq!(list["data"][0]["id"], other_id, "newest first");
    assert_eq!(list["data"][1]["id"], key_id);
    assert_eq!(list["data"][1]["key_hint"], "WXYZ");

    let patched = app
        .patch(
            &format!("/v1/admin/provider-keys/{key_id}"),
            admin,
            json!({"weight": 0, "enabled": false, "name": "backup"}),
        )
        .await;
    assert_secret_absent(&patched.text);
    let patched = patched.assert_status(200);
    assert_eq!(patched["id"], key_id);
    assert_eq!(patched["weight"], 0);
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["name"], "backup");
    assert_eq!(patched["key_hint"], "WXYZ");

    // Nowhere else either.
    for path in [
        format!("/v1/admin/providers/{provider_id}"),
        "/v1/admin/providers".to_owned(),
        "/v1/admin/models".to_owned(),
    ] {
        let reply = app.get(&path, admin).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_secret_absent(&reply.text);
    }

    // At rest: only ciphertext, which contains neither the secret nor a piece of it.
    #[derive(diesel::QueryableByName)]
    struct Stored {
        #[diesel(sql_type = diesel::sql_types::Bytea)]
        secret_ciphertext: Vec<u8>,
        #[diesel(sql_type = diesel::sql_types::Text)]
        key_hint: String,
    }
    let mut conn = app.pool.get().await.unwrap();
    let stored: Stored = diesel::sql_query(format!(
        "SELECT secret_ciphertext, key_hint FROM provider_keys WHERE id = {key_id}"
    ))
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(stored.key_hint, "WXYZ");
    let bytes = &stored.secret_ciphertext;
    assert!(
        bytes.len() >= secret.len() + 12 + 16,
        "not nonce || ciphertext || tag: {} bytes",
        bytes.len()
    );
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(secret.as_bytes()),
        "the secret is stored in plaintext"
    );
    for fragment in fragments {
        assert!(
            !contains(fragment.as_bytes()),
            "part of the secret is stored in plaintext"
        );
    }
    let as_hex = hex::encode(bytes);
    assert!(!as_hex.contains(&hex::encode(&secret.as_bytes()[..16])));
    // Two keys never share ciphertext (fresh nonce each).
    let all: Vec<Stored> =
        diesel::sql_query("SELECT secret_ciphertext, key_hint FROM provider_keys")
            .load(&mut conn)
            .await
            .unwrap();
    assert_eq!(all.len(), 2);
    assert_ne!(all[0].secret_ciphertext, all[1].secret_ciphertext);
    drop(conn);

    // Refused: bad weights, bad secrets, unknown provider or key. Nothing written.
    let before = app.snapshot().await;
    for body in [
        json!({"api_key": "sk-abc-1234", "weight": -1}),
        json!({"api_key": "sk-abc-1234", "weight": 1001}),
        json!({"api_key": "sk-abc-1234", "weight": "5"}),
        json!({"api_key": "sk-abc-1234", "weight": 2_147_483_648_i64}),
        json!({"api_key": ""}),
        json!({"api_key": "sk-with space"}),
        json!({"name": "no secret"}),
        json!({"api_key": "sk-abc-1234", "provider_id": provider_id}),
    ] {
        let reply = app.post(&keys_path, admin, body).await;
        reply.assert_error(400, "invalid_request");
        assert!(
            !reply.text.contains("sk-abc-1234"),
            "the refused secret is echoed: {}",
            reply.text
        );
    }
    let key_path = format!("/v1/admin/provider-keys/{key_id}");
    app.patch(&key_path, admin, json!({"weight": -1}))
        .await
        .assert_error(400, "invalid_request");
    app.patch(&key_path, admin, json!({"weight": 1001}))
        .await
        .assert_error(400, "invalid_request");
    app.patch(&key_path, admin, json!({"api_key": "sk-new-secret-9999"}))
        .await
        .assert_error(400, "invalid_request");
    app.post(
        "/v1/admin/providers/987654321/keys",
        admin,
        json!({"api_key": "sk-abc-1234"}),
    )
    .await
    .assert_error(404, "not_found");
    app.get("/v1/admin/providers/987654321/keys", admin)
        .await
        .assert_error(404, "not_found");
    app.patch(
        "/v1/admin/provider-keys/987654321",
        admin,
        json!({"weight": 2}),
    )
    .await
    .assert_error(404, "not_found");
    app.delete("/v1/admin/provider-keys/987654321", admin)
        .await
        .assert_error(404, "not_found");
    assert_eq!(app.snapshot().await, before);
    let unchanged = app.get(&keys_path, admin).await;
    assert_eq!(unchanged.json["data"][1]["weight"], 0);
    assert_eq!(unchanged.json["data"][1]["name"], "backup");

    // Delete.
    let deleted = app.delete(&key_path, admin).await;
    assert_eq!(deleted.status, 204);
    app.delete(&key_path, admin)
        .await
        .assert_error(404, "not_found");
    app.patch(&key_path, admin, json!({"weight": 3}))
        .await
        .assert_error(404, "not_found");
    let list = app.get(&keys_path, admin).await;
    assert_eq!(list.assert_status(200)["total"], 1);
    assert_eq!(list.json["data"][0]["id"], other_id);
}

// ---- models

#[tokio::test(flavor = "multi_thread")]
async fn models_crud_with_exact_pricing_validated_per_kind() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let provider_id = create_provider(&app, "upstream").await;

    let chat = create_chat_model(&app, provider_id, "gpt-4o-mini").await;
    let chat_id = chat["id"].as_i64().unwrap();
    assert_eq!(chat["name"], "gpt-4o-mini");
    assert_eq!(chat["provider_id"], provider_id);
    assert_eq!(chat["upstream_model"], "gpt-4o-mini");
    assert_eq!(chat["kind"], "chat");
    assert_eq!(chat["max_output_tokens"], 4096);
    assert_eq!(chat["image_input_tokens"], 1600);
    assert_eq!(chat["enabled"], true);
    assert!(chat["created_at"].is_string());
    // Decimal strings, exact; trailing zeros are not significant ("0.60" is 0.6).
    assert_eq!(
        chat["pricing"],
        json!({"input_per_million": "0.15", "output_per_million": "0.6"})
    );

    let image = app
        .post(
            "/v1/admin/models",
            admin,
            json!({
                "name": "dall-e-3",
                "provider_id": provider_id,
                "upstream_model": "dall-e-3-hd",
                "kind": "image",
                "pricing": {"per_image": "0.04", "per_request": "0.00000001"},
                "max_output_tokens": 1,
                "enabled": true,
            }),
        )
        .await;
    let image = image.assert_status(201).clone();
    let image_id = image["id"].as_i64().unwrap();
    assert_eq!(image["kind"], "image");
    assert_eq!(image["upstream_model"], "dall-e-3-hd");
    assert_eq!(image["max_output_tokens"], 1);
    assert_eq!(
        image["pricing"],
        json!({"per_image": "0.04", "per_request": "0.00000001"})
    );

    // Prices sent as JSON numbers are parsed exactly, not through a float.
    let numbers = app
        .send_raw(
            Method::POST,
            "/v1/admin/models",
            Some(admin),
            "application/json",
            format!(
                r#"{{"name":"exact","provider_id":{provider_id},"kind":"chat","pricing":{{"input_per_million":0.1,"output_per_million":1234567.12345678,"cached_input_per_million":0.03}}}}"#
            )
            .into_bytes(),
        )
        .await;
    // 1234567.12345678 is above the price ceiling of 1000000.
    numbers.assert_error(400, "invalid_request");
    let numbers = app
        .send_raw(
            Method::POST,
            "/v1/admin/models",
            Some(admin),
            "application/json",
            format!(
                r#"{{"name":"exact","provider_id":{provider_id},"kind":"chat","pricing":{{"input_per_million":0.1,"output_per_million":999999.99999999,"cached_input_per_million":0.03}}}}"#
            )
            .into_bytes(),
        )
        .await;
    let numbers = numbers.assert_status(201).clone();
    assert_eq!(
        numbers["pricing"],
        json!({"input_per_million": "0.1", "output_per_million": "999999.99999999", "cached_input_per_million": "0.03"})
    );
    let exact_id = numbers["id"].as_i64().unwrap();

    let got = app.get(&format!("/v1/admin/models/{chat_id}"), admin).await;
    assert_eq!(got.assert_status(200), &chat);
    let list = app.get("/v1/admin/models", admin).await;
    let list = list.assert_status(200);
    assert_eq!(list["total"], 3);
    assert_eq!(list["data"][0]["id"], exact_id, "newest first");
    assert_eq!(list["data"][1]["id"], image_id);
    assert_eq!(list["data"][2]["id"], chat_id);

    // Refused creations write nothing.
    let before = app.snapshot().await;
    let model = |name: &str, kind: &str, pricing: Value| json!({"name": name, "provider_id": provider_id, "kind": kind, "pricing": pricing});
    for body in [
        model("m1", "chat", json!({"input_per_million": "0.15"})),
        model("m1", "chat", json!({"output_per_million": "0.15"})),
        model("m1", "chat", json!({})),
        model("m1", "chat", json!({"per_image": "0.04"})),
        model("m1", "image", json!({})),
        model(
            "m1",
            "image",
            json!({"input_per_million": "1", "output_per_million": "1"}),
        ),
        model(
            "m1",
            "chat",
            json!({"input_per_million": "-0.01", "output_per_million": "1"}),
        ),
        model(
            "m1",
            "chat",
            json!({"input_per_million": "1", "output_per_million": -1}),
        ),
        model(
            "m1",
            "image",
            json!({"per_image": "0.04", "per_request": "-0.00000001"}),
        ),
        model(
            "m1",
            "chat",
            json!({"input_per_million": "1", "output_per_million": "1", "per_token": "1"}),
        ),
        model(
            "m1",
            "chat",
            json!({"input_per_milion": "1", "output_per_million": "1"}),
        ),
        model(
            "m1",
            "chat",
            json!({"input_per_million": "1e3", "output_per_million": "1"}),
        ),
        model(
            "m1",
            "chat",
            json!({"input_per_million": "0.000000001", "output_per_million": "1"}),
        ),
        model(
            "m1",
            "chat",
            json!({"input_per_million": true, "output_per_million": "1"}),
        ),
        model(
            "m1",
            "chat",
            json!({"input_per_million": "1000000.00000001", "output_per_million": "1"}),
        ),
        model("m1", "chat", json!("0.15")),
        model(
            "m1",
            "video",
            json!({"input_per_million": "1", "output_per_million": "1"}),
        ),
        model(
            "has space",
            "chat",
            json!({"input_per_million": "1", "output_per_million": "1"}),
        ),
        model(
            "",
            "chat",
            json!({"input_per_million": "1", "output_per_million": "1"}),
        ),
        json!({"name": "m1", "provider_id": provider_id, "kind": "chat"}),
        json!({"name": "m1", "kind": "chat", "pricing": {"input_per_million": "1", "output_per_million": "1"}}),
        json!({"name": "m1", "provider_id": provider_id, "kind": "chat",
            "pricing": {"input_per_million": "1", "output_per_million": "1"}, "max_output_tokens": 0}),
        json!({"name": "m1", "provider_id": provider_id, "kind": "chat",
            "pricing": {"input_per_million": "1", "output_per_million": "1"}, "image_input_tokens": 0}),
        json!({"name": "m1", "provider_id": provider_id, "kind": "chat",
            "pricing": {"input_per_million": "1", "output_per_million": "1"}, "image_input_tokens": 1000001}),
        json!({"name": "m1", "provider_id": provider_id, "kind": "chat",
            "pricing": {"input_per_million": "1", "output_per_million": "1"}, "image_input_tokens": "many"}),
        json!({"name": "m1", "provider_id": provider_id, "kind": "chat",
            "pricing": {"input_per_million": "1", "output_per_million": "1"}, "secret": "x"}),
    ] {
        let reply = app.post("/v1/admin/models", admin, body.clone()).await;
        assert_eq!(reply.status, 400, "{body} -> {}", reply.text);
        reply.assert_error(400, "invalid_request");
    }
    app.post(
        "/v1/admin/models",
        admin,
        json!({"name": "m1", "provider_id": 987654321, "kind": "chat",
            "pricing": {"input_per_million": "1", "output_per_million": "1"}}),
    )
    .await
    .assert_error(404, "not_found");
    app.post(
        "/v1/admin/models",
        admin,
        json!({"name": "gpt-4o-mini", "provider_id": provider_id, "kind": "chat",
            "pricing": {"input_per_million": "1", "output_per_million": "1"}}),
    )
    .await
    .assert_error(409, "conflict");
    assert_eq!(app.snapshot().await, before);

    // Patch: pricing is validated against the model's kind.
    let chat_path = format!("/v1/admin/models/{chat_id}");
    let image_path = format!("/v1/admin/models/{image_id}");
    for (path, body) in [
        (&chat_path, json!({"pricing": {"per_image": "0.1"}})),
        (&chat_path, json!({"pricing": {"input_per_million": "1"}})),
        (
            &chat_path,
            json!({"pricing": {"input_per_million": "-1", "output_per_million": "1"}}),
        ),
        (
            &chat_path,
            json!({"pricing": {"input_per_million": "1", "output_per_million": "1", "bogus": "1"}}),
        ),
        (
            &image_path,
            json!({"pricing": {"input_per_million": "1", "output_per_million": "1"}}),
        ),
        (&image_path, json!({"pricing": {"per_image": "-0.04"}})),
        (&chat_path, json!({"kind": "image"})),
        (&chat_path, json!({"name": "bad name!"})),
        (&chat_path, json!({"max_output_tokens": 0})),
        (&chat_path, json!({"image_input_tokens": -5})),
    ] {
        let reply = app.patch(path, admin, body.clone()).await;
        assert_eq!(reply.status, 400, "{body} -> {}", reply.text);
        reply.assert_error(400, "invalid_request");
    }
    app.patch(&chat_path, admin, json!({"name": "dall-e-3"}))
        .await
        .assert_error(409, "conflict");
    app.patch(&chat_path, admin, json!({"provider_id": 987654321}))
        .await
        .assert_error(404, "not_found");
    app.patch(
        "/v1/admin/models/987654321",
        admin,
        json!({"enabled": false}),
    )
    .await
    .assert_error(404, "not_found");
    app.get("/v1/admin/models/987654321", admin)
        .await
        .assert_error(404, "not_found");
    assert_eq!(app.snapshot().await, before);
    assert_eq!(app.get(&chat_path, admin).await.assert_status(200), &chat);

    let repriced = app
        .patch(
            &chat_path,
            admin,
            json!({"pricing": {"input_per_million": "2.50", "output_per_million": "10", "cached_input_per_million": "1.25"},
                "upstream_model": "gpt-4o-mini-2024-07-18", "max_output_tokens": 16384,
                "image_input_tokens": 36835}),
        )
        .await;
    let repriced = repriced.assert_status(200).clone();
    let new_pricing = json!({"input_per_million": "2.5", "output_per_million": "10", "cached_input_per_million": "1.25"});
    assert_eq!(repriced["pricing"], new_pricing);
    assert_eq!(repriced["upstream_model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(repriced["max_output_tokens"], 16384);
    assert_eq!(repriced["image_input_tokens"], 36835);
    assert_eq!(repriced["name"], "gpt-4o-mini");
    assert_eq!(repriced["kind"], "chat");
    assert_eq!(
        app.get(&chat_path, admin).await.json["pricing"],
        new_pricing
    );
    let image_repriced = app
        .patch(
            &image_path,
            admin,
            json!({"pricing": {"per_image": "0.08"}}),
        )
        .await;
    assert_eq!(
        image_repriced.assert_status(200)["pricing"],
        json!({"per_image": "0.08"})
    );

    // Delete.
    let deleted = app
        .delete(&format!("/v1/admin/models/{exact_id}"), admin)
        .await;
    assert_eq!(deleted.status, 204);
    app.get(&format!("/v1/admin/models/{exact_id}"), admin)
        .await
        .assert_error(404, "not_found");
    app.delete(&format!("/v1/admin/models/{exact_id}"), admin)
        .await
        .assert_error(404, "not_found");
    assert_eq!(app.count("llm_models").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn public_model_list_shows_enabled_models_only() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let provider_id = create_provider(&app, "upstream").await;
    let chat = create_chat_model(&app, provider_id, "b-chat").await;
    let image = app
        .post(
            "/v1/admin/models",
            admin,
            json!({"name": "a-image", "provider_id": provider_id, "kind": "image",
                "pricing": {"per_image": "0.04"}}),
        )
        .await;
    image.assert_status(201);
    let hidden = app
        .post(
            "/v1/admin/models",
            admin,
            json!({"name": "c-hidden", "provider_id": provider_id, "kind": "chat", "enabled": false,
                "pricing": {"input_per_million": "1", "output_per_million": "1"}}),
        )
        .await;
    assert_eq!(hidden.assert_status(201)["enabled"], false);

    let (_, token) = app.new_user().await;
    let key = app
        .post("/v1/me/access-keys", &token, json!({"name": "laptop"}))
        .await;
    let key = key.assert_status(201)["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk-"), "{key}");

    let names = |reply: &integration_tests::Reply| -> Vec<String> {
        let body = reply.assert_status(200);
        assert_eq!(body["object"], "list");
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m["object"], "model");
                assert!(m["created"].is_i64(), "{m}");
                assert!(m["owned_by"].is_string(), "{m}");
                assert!(m.get("pricing").is_none(), "{m}");
                m["id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let listed = app
        .send(Method::GET, "/v1/models", Credential::Bearer(&key), None)
        .await;
    assert_eq!(names(&listed), vec!["a-image", "b-chat"]);
    let by_header = app
        .send(
            Method::GET,
            "/v1/models",
            Credential::AccessKeyHeader(&key),
            None,
        )
        .await;
    assert_eq!(names(&by_header), vec!["a-image", "b-chat"]);

    // Disabling a model hides it at once; the admin still sees it.
    let chat_path = format!("/v1/admin/models/{}", chat["id"]);
    let disabled = app
        .patch(&chat_path, admin, json!({"enabled": false}))
        .await;
    assert_eq!(disabled.assert_status(200)["enabled"], false);
    let listed = app
        .send(Method::GET, "/v1/models", Credential::Bearer(&key), None)
        .await;
    assert_eq!(names(&listed), vec!["a-image"]);
    assert_eq!(app.get("/v1/admin/models", admin).await.json["total"], 3);

    // Enabling one shows it.
    app.patch(&chat_path, admin, json!({"enabled": true}))
        .await
        .assert_status(200);
    let hidden_path = format!("/v1/admin/models/{}", hidden.json["id"]);
    app.patch(&hidden_path, admin, json!({"enabled": true}))
        .await
        .assert_status(200);
    let listed = app
        .send(Method::GET, "/v1/models", Credential::Bearer(&key), None)
        .await;
    assert_eq!(names(&listed), vec!["a-image", "b-chat", "c-hidden"]);

    // A disabled provider hides its models.
    app.patch(
        &format!("/v1/admin/providers/{provider_id}"),
        admin,
        json!({"enabled": false}),
    )
    .await
    .assert_status(200);
    let listed = app
        .send(Method::GET, "/v1/models", Credential::Bearer(&key), None)
        .await;
    assert_eq!(names(&listed), Vec::<String>::new());

    // Credentials: an access key is needed, not a session token.
    app.send(Method::GET, "/v1/models", Credential::None, None)
        .await
        .assert_error(401, "unauthorized");
    app.send(
        Method::GET,
        "/v1/models",
        Credential::Bearer("sk-not-a-real-key"),
        None,
    )
    .await
    .assert_error(401, "unauthorized");
    app.send(Method::GET, "/v1/models", Credential::Bearer(&token), None)
        .await
        .assert_error(401, "unauthorized");
}

// ---- global lists

#[tokio::test(flavor = "multi_thread")]
async fn admin_order_and_usage_lists_filter_by_user() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let (alice, alice_token) = app.new_user().await;
    let (bob, bob_token) = app.new_user().await;
    let mut alice_orders = Vec::new();
    for amount in ["1", "2.5"] {
        let reply = app
            .post("/v1/me/orders", &alice_token, json!({"amount": amount}))
            .await;
        alice_orders.push(
            reply.assert_status(201)["order_no"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let bob_order = app
        .post("/v1/me/orders", &bob_token, json!({"amount": "7"}))
        .await;
    let bob_order = bob_order.assert_status(201)["order_no"]
        .as_str()
        .unwrap()
        .to_owned();

    let order_nos = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_no"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = app.get("/v1/admin/orders", admin).await;
    let all = all.assert_status(200);
    assert_eq!(all["total"], 3);
    assert_eq!(
        order_nos(all),
        vec![
            bob_order.clone(),
            alice_orders[1].clone(),
            alice_orders[0].clone()
        ]
    );
    let only_alice = app
        .get(&format!("/v1/admin/orders?user_id={alice}"), admin)
        .await;
    let only_alice = only_alice.assert_status(200);
    assert_eq!(only_alice["total"], 2);
    assert_eq!(
        order_nos(only_alice),
        vec![alice_orders[1].clone(), alice_orders[0].clone()]
    );
    assert!(
        only_alice["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["user_id"] == alice)
    );
    assert_eq!(only_alice["data"][0]["amount"], "2.5");
    let only_bob = app
        .get(&format!("/v1/admin/orders?user_id={bob}&limit=1"), admin)
        .await;
    let only_bob = only_bob.assert_status(200);
    assert_eq!(only_bob["total"], 1);
    assert_eq!(only_bob["limit"], 1);
    assert_eq!(order_nos(only_bob), vec![bob_order]);
    let paged = app
        .get(
            &format!("/v1/admin/orders?user_id={alice}&limit=1&offset=1"),
            admin,
        )
        .await;
    assert_eq!(
        order_nos(paged.assert_status(200)),
        vec![alice_orders[0].clone()]
    );
    let nobody = app.get("/v1/admin/orders?user_id=987654321", admin).await;
    assert_eq!(nobody.assert_status(200)["total"], 0);
    assert_eq!(nobody.json["data"], json!([]));

    // Usage logs are written by model calls; rows are inserted directly to test the filter.
    let mut conn = app.pool.get().await.unwrap();
    for (user, model, cost, age) in [
        (alice, "m-a1", "0.0005253", 3),
        (bob, "m-b1", "0.01", 2),
        (alice, "m-a2", "1.5", 1),
    ] {
        diesel::sql_query(format!(
            "INSERT INTO usage_logs (request_id, user_id, model_name, prompt_tokens, completion_tokens, cost, created_at) \
             VALUES (gen_random_uuid(), {user}, '{model}', 10, 20, {cost}, now() - interval '{age} minutes')"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    drop(conn);
    let models = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["model"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = app.get("/v1/admin/usage-logs", admin).await;
    let all = all.assert_status(200);
    assert_eq!(all["total"], 3);
    assert_eq!(models(all), vec!["m-a2", "m-b1", "m-a1"]);
    let only_alice = app
        .get(&format!("/v1/admin/usage-logs?user_id={alice}"), admin)
        .await;
    let only_alice = only_alice.assert_status(200);
    assert_eq!(only_alice["total"], 2);
    assert_eq!(models(only_alice), vec!["m-a2", "m-a1"]);
    assert!(
        only_alice["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["user_id"] == alice)
    );
    assert_eq!(only_alice["data"][1]["cost"], "0.0005253");
    assert_eq!(only_alice["data"][1]["prompt_tokens"], 10);
    assert_eq!(only_alice["data"][1]["completion_tokens"], 20);
    let only_bob = app
        .get(&format!("/v1/admin/usage-logs?user_id={bob}"), admin)
        .await;
    assert_eq!(models(only_bob.assert_status(200)), vec!["m-b1"]);
    let nobody = app
        .get("/v1/admin/usage-logs?user_id=987654321", admin)
        .await;
    assert_eq!(nobody.assert_status(200)["total"], 0);

    // The users' own lists agree.
    let mine = app.get("/v1/me/usage", &bob_token).await;
    assert_eq!(models(mine.assert_status(200)), vec!["m-b1"]);
    let mine = app.get("/v1/me/orders", &alice_token).await;
    assert_eq!(mine.assert_status(200)["total"], 2);
}

// ---- role guard

#[tokio::test(flavor = "multi_thread")]
async fn a_user_token_gets_403_on_every_admin_route() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let (user_id, token) = app.new_user().await;
    let provider_id = create_provider(&app, "upstream").await;
    let key = app
        .post(
            &format!("/v1/admin/providers/{provider_id}/keys"),
            admin,
            json!({"api_key": "sk-upstream-1234"}),
        )
        .await;
    let key_id = key.assert_status(201)["id"].as_i64().unwrap();
    let model_id = create_chat_model(&app, provider_id, "gpt-test").await["id"]
        .as_i64()
        .unwrap();
    let order = app
        .post("/v1/me/orders", &token, json!({"amount": "5"}))
        .await;
    let order_no = order.assert_status(201)["order_no"]
        .as_str()
        .unwrap()
        .to_owned();

    // Bodies that an admin would have had accepted, so only the role decides.
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/admin/users".into(), None),
        (
            Method::POST,
            "/v1/admin/users".into(),
            Some(json!({"email": "evil@example.com", "password": "password-123", "role": "admin"})),
        ),
        (Method::GET, format!("/v1/admin/users/{user_id}"), None),
        (
            Method::PATCH,
            format!("/v1/admin/users/{user_id}"),
            Some(json!({"role": "admin"})),
        ),
        (Method::DELETE, format!("/v1/admin/users/{user_id}"), None),
        (
            Method::POST,
            format!("/v1/admin/users/{user_id}/balance-adjustments"),
            Some(json!({"amount": "1000", "reason": "free money"})),
        ),
        (Method::GET, "/v1/admin/providers".into(), None),
        (
            Method::POST,
            "/v1/admin/providers".into(),
            Some(json!({"name": "evil", "kind": "openai", "base_url": "https://evil.example.com"})),
        ),
        (
            Method::GET,
            format!("/v1/admin/providers/{provider_id}"),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/admin/providers/{provider_id}"),
            Some(json!({"base_url": "https://evil.example.com"})),
        ),
        (
            Method::DELETE,
            format!("/v1/admin/providers/{provider_id}"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/admin/providers/{provider_id}/keys"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/admin/providers/{provider_id}/keys"),
            Some(json!({"api_key": "sk-evil-0000"})),
        ),
        (
            Method::PATCH,
            format!("/v1/admin/provider-keys/{key_id}"),
            Some(json!({"weight": 0})),
        ),
        (
            Method::DELETE,
            format!("/v1/admin/provider-keys/{key_id}"),
            None,
        ),
        (Method::GET, "/v1/admin/models".into(), None),
        (
            Method::POST,
            "/v1/admin/models".into(),
            Some(
                json!({"name": "evil", "provider_id": provider_id, "kind": "chat",
                "pricing": {"input_per_million": "0", "output_per_million": "0"}}),
            ),
        ),
        (Method::GET, format!("/v1/admin/models/{model_id}"), None),
        (
            Method::PATCH,
            format!("/v1/admin/models/{model_id}"),
            Some(json!({"pricing": {"input_per_million": "0", "output_per_million": "0"}})),
        ),
        (Method::DELETE, format!("/v1/admin/models/{model_id}"), None),
        (Method::GET, "/v1/admin/orders".into(), None),
        (
            Method::GET,
            format!("/v1/admin/orders?user_id={user_id}"),
            None,
        ),
        (Method::GET, "/v1/admin/usage-logs".into(), None),
        (
            Method::POST,
            format!("/v1/orders/{order_no}/complete"),
            Some(json!({})),
        ),
    ];
    let before = app.snapshot().await;
    for (method, path, body) in &routes {
        let reply = app
            .send(
                method.clone(),
                path,
                Credential::Bearer(&token),
                body.clone(),
            )
            .await;
        assert_eq!(reply.status, 403, "{method} {path} -> {}", reply.text);
        reply.assert_error(403, "forbidden");
        assert!(
            reply.headers.contains_key("x-request-id"),
            "{method} {path}"
        );
        let anonymous = app
            .send(method.clone(), path, Credential::None, body.clone())
            .await;
        assert_eq!(
            anonymous.status, 401,
            "{method} {path} -> {}",
            anonymous.text
        );
        anonymous.assert_error(401, "unauthorized");
    }
    assert_eq!(app.snapshot().await, before);
    assert_balance_matches_ledger(&app, user_id, "0").await;

    // Invalid bodies and paths do not get past the role check either.
    let invalid: Vec<(Method, String, Option<Value>)> = vec![
        (Method::POST, "/v1/admin/users".into(), Some(json!({}))),
        (
            Method::PATCH,
            format!("/v1/admin/users/{user_id}"),
            Some(json!({"bogus": 1})),
        ),
        (Method::GET, "/v1/admin/users/abc".into(), None),
        (Method::GET, "/v1/admin/users?limit=0".into(), None),
        (
            Method::POST,
            format!("/v1/admin/users/{user_id}/balance-adjustments"),
            Some(json!({"amount": "x"})),
        ),
        (
            Method::POST,
            "/v1/admin/models".into(),
            Some(json!({"name": 1})),
        ),
    ];
    for (method, path, body) in &invalid {
        let reply = app
            .send(
                method.clone(),
                path,
                Credential::Bearer(&token),
                body.clone(),
            )
            .await;
        assert_eq!(reply.status, 403, "{method} {path} -> {}", reply.text);
        reply.assert_error(403, "forbidden");
    }
    assert_eq!(app.snapshot().await, before);

    // The same routes work for the admin (sanity: the 403 is about the role, not the request).
    let user = app.get(&format!("/v1/admin/users/{user_id}"), admin).await;
    assert_eq!(user.assert_status(200)["role"], "user");
    assert_eq!(user.json["status"], "active");
}
