use chrono::Utc;
use integration_tests::{ADMIN_EMAIL, Credential, spawn_app};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn register_login_me() {
    let app = spawn_app().await;
    let reply = app
        .send(
            Method::POST,
            "/v1/auth/register",
            Credential::None,
            Some(json!({"email": "  Ada@Example.COM ", "password": "password-123"})),
        )
        .await;
    let user = &reply.assert_status(201)["user"];
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["role"], "user");
    assert_eq!(user["status"], "active");
    assert_eq!(user["balance"], "0");
    assert!(user.get("password_hash").is_none());

    let token = app.login("ada@example.com", "password-123").await;
    let me = app.get("/v1/me", &token).await;
    assert_eq!(me.assert_status(200)["email"], "ada@example.com");

    let login = app
        .send(
            Method::POST,
            "/v1/auth/login",
            Credential::None,
            Some(json!({"email": "ada@example.com", "password": "password-123"})),
        )
        .await;
    let body = login.assert_status(200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["user"]["email"], "ada@example.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_refuses_taken_emails_weak_passwords_and_role_escalation() {
    let app = spawn_app().await;
    let register = |body| {
        app.send(
            Method::POST,
            "/v1/auth/register",
            Credential::None,
            Some(body),
        )
    };
    register(json!({"email": "bob@example.com", "password": "password-123"}))
        .await
        .assert_status(201);
    let before = app.snapshot().await;
    register(json!({"email": "BOB@example.com", "password": "password-456"}))
        .await
        .assert_error(409, "conflict");
    register(json!({"email": "carol@example.com", "password": "short"}))
        .await
        .assert_error(400, "invalid_request");
    register(json!({"email": "carol@example.com", "password": "x".repeat(73)}))
        .await
        .assert_error(400, "invalid_request");
    register(json!({"email": "not-an-email", "password": "password-123"}))
        .await
        .assert_error(400, "invalid_request");
    register(json!({"email": "carol@example.com"}))
        .await
        .assert_error(400, "invalid_request");
    register(json!({"email": "carol@example.com", "password": "password-123", "role": "admin"}))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_failures_look_alike() {
    let app = spawn_app().await;
    let (user_id, _) = app.new_user().await;
    let wrong_password = app
        .send(
            Method::POST,
            "/v1/auth/login",
            Credential::None,
            Some(json!({"email": ADMIN_EMAIL, "password": "wrong-password"})),
        )
        .await;
    wrong_password.assert_error(401, "unauthorized");
    let unknown = app
        .send(
            Method::POST,
            "/v1/auth/login",
            Credential::None,
            Some(json!({"email": "nobody@example.com", "password": "wrong-password"})),
        )
        .await;
    unknown.assert_error(401, "unauthorized");
    assert_eq!(
        wrong_password.json["error"]["message"],
        unknown.json["error"]["message"]
    );

    // A disabled user cannot log in, and the same message is given.
    let email = app
        .get(&format!("/v1/admin/users/{user_id}"), app.admin_token())
        .await
        .json["email"]
        .as_str()
        .unwrap()
        .to_owned();
    app.delete(&format!("/v1/admin/users/{user_id}"), app.admin_token())
        .await
        .assert_status(204);
    let disabled = app
        .send(
            Method::POST,
            "/v1/auth/login",
            Credential::None,
            Some(json!({"email": email, "password": "password-123"})),
        )
        .await;
    disabled.assert_error(401, "unauthorized");
    assert_eq!(
        disabled.json["error"]["message"],
        unknown.json["error"]["message"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_expired_foreign_and_unsigned_tokens_are_refused() {
    let app = spawn_app().await;
    let (user_id, token) = app.new_user().await;
    let secret = "test-jwt-secret-that-is-long-enough-0123456789";
    let sub = user_id.to_string();

    app.get("/v1/me", &token).await.assert_status(200);
    // A token signed with our secret but expired an hour ago.
    let expired =
        integration_tests::forge_token(secret, jsonwebtoken::Algorithm::HS256, &sub, -3600);
    app.get("/v1/me", &expired)
        .await
        .assert_error(401, "unauthorized");
    // Signed with another secret.
    let foreign = integration_tests::forge_token(
        "another-secret-another-secret-another",
        jsonwebtoken::Algorithm::HS256,
        &sub,
        3600,
    );
    app.get("/v1/me", &foreign)
        .await
        .assert_error(401, "unauthorized");
    // HS512 with our secret: only HS256 is accepted.
    let other_alg =
        integration_tests::forge_token(secret, jsonwebtoken::Algorithm::HS512, &sub, 3600);
    app.get("/v1/me", &other_alg)
        .await
        .assert_error(401, "unauthorized");
    // alg: none, no signature.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64.encode(
        json!({"sub": sub, "role": "admin", "exp": Utc::now().timestamp() + 3600, "iss": "ai-gateway"})
            .to_string(),
    );
    app.get("/v1/me", &format!("{header}.{payload}."))
        .await
        .assert_error(401, "unauthorized");
    // A payload edited to another user, original signature kept.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("1");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    app.get("/v1/me", &tampered)
        .await
        .assert_error(401, "unauthorized");
    // No token, garbage, wrong scheme.
    app.send(Method::GET, "/v1/me", Credential::None, None)
        .await
        .assert_error(401, "unauthorized");
    app.get("/v1/me", "garbage")
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn role_guards_answer_401_and_403_and_follow_the_database() {
    let app = spawn_app().await;
    let (user_id, token) = app.new_user().await;
    app.send(Method::GET, "/v1/admin/users", Credential::None, None)
        .await
        .assert_error(401, "unauthorized");
    app.get("/v1/admin/users", &token)
        .await
        .assert_error(403, "forbidden");
    app.post("/v1/orders/ord_x/complete", &token, json!({}))
        .await
        .assert_error(403, "forbidden");

    // Promotion takes effect on the user's existing token at once.
    app.patch(
        &format!("/v1/admin/users/{user_id}"),
        app.admin_token(),
        json!({"role": "admin"}),
    )
    .await
    .assert_status(200);
    app.get("/v1/admin/users", &token).await.assert_status(200);
    // Disabling takes effect at once too.
    app.delete(&format!("/v1/admin/users/{user_id}"), app.admin_token())
        .await
        .assert_status(204);
    app.get("/v1/me", &token)
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_password_ends_the_sessions_opened_before_it() {
    let app = spawn_app().await;
    let (user_id, email) = app.register("old-password-1").await;
    let before = app.login(&email, "old-password-1").await;
    app.get("/v1/me", &before).await.assert_status(200);
    // A role change keeps the session; a password reset (say, the account leaked) ends it.
    app.patch(
        &format!("/v1/admin/users/{user_id}"),
        app.admin_token(),
        json!({"role": "user"}),
    )
    .await
    .assert_status(200);
    app.get("/v1/me", &before).await.assert_status(200);
    app.patch(
        &format!("/v1/admin/users/{user_id}"),
        app.admin_token(),
        json!({"password": "new-password-2"}),
    )
    .await
    .assert_status(200);
    app.get("/v1/me", &before)
        .await
        .assert_error(401, "unauthorized");
    app.post("/v1/me/access-keys", &before, json!({"name": "k"}))
        .await
        .assert_error(401, "unauthorized");
    let after = app.login(&email, "new-password-2").await;
    app.get("/v1/me", &after).await.assert_status(200);
    // A token forged without the stamp, though signed with our secret, is refused.
    let unstamped = integration_tests::forge_token(
        "test-jwt-secret-that-is-long-enough-0123456789",
        jsonwebtoken::Algorithm::HS256,
        &user_id.to_string(),
        3600,
    );
    app.get("/v1/me", &unstamped)
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_admin_exists_once() {
    let app = spawn_app().await;
    let me = app.get("/v1/me", app.admin_token()).await;
    assert_eq!(me.assert_status(200)["role"], "admin");
    assert_eq!(me.json["email"], ADMIN_EMAIL);
    // Building a second app on the same database does not create another admin.
    let again = gateway_api::Application::build(app.settings.clone())
        .await
        .unwrap();
    drop(again);
    assert_eq!(app.count("users").await, 1);
}
