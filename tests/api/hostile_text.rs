//! Oversized strings, control characters (NUL included) and SQL metacharacters in every text
//! field of every route that takes one: a 4xx, or stored verbatim; never a 5xx.

use integration_tests::{Credential, spawn_app};
use mock_llm::MockConfig;
use reqwest::Method;
use serde_json::{Value, json};

fn hostile_values() -> Vec<(&'static str, String)> {
    vec![
        ("sql", "x'); DROP TABLE users; --".to_owned()),
        ("sql quote", "' OR '1'='1".to_owned()),
        ("nul", "a\u{0}b".to_owned()),
        ("controls", "\u{1}\u{7}\u{1b}[31mred\r\n\t\u{7f}".to_owned()),
        ("bidi", "\u{202e}gnp.exe".to_owned()),
        ("emoji", "🦀💸".to_owned()),
        ("oversized", "A".repeat(200_000)),
        ("empty", String::new()),
        ("percent", "%s%n%x%%".to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_text_in_every_field_answers_4xx_or_is_stored_verbatim_never_5xx() {
    let app = spawn_app().await;
    let mock = mock_llm::start(MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap();
    let setup = app.chat_setup(mock, &[("good-key", 1)], "5").await;
    let admin = app.admin_token().to_owned();
    let (user_id, user_token) = app.new_user().await;
    let mut requests = 0;
    let mut stored = 0;
    let mut failures = Vec::new();
    for (what, v) in hostile_values() {
        // (method, path, credential, body, the field whose echo must be verbatim when accepted)
        let cases: Vec<(Method, String, Credential<'_>, Value, Option<&str>)> = vec![
            (
                Method::POST,
                "/v1/auth/register".into(),
                Credential::None,
                json!({"email": v, "password": "password-123"}),
                None,
            ),
            (
                Method::POST,
                "/v1/auth/register".into(),
                Credential::None,
                json!({"email": format!("h{}@example.com", uuid::Uuid::new_v4().simple()), "password": v}),
                None,
            ),
            (
                Method::POST,
                "/v1/auth/login".into(),
                Credential::None,
                json!({"email": v, "password": v}),
                None,
            ),
            (
                Method::POST,
                "/v1/auth/password".into(),
                Credential::Bearer(&user_token),
                json!({"current_password": v, "new_password": v}),
                None,
            ),
            (
                Method::POST,
                "/v1/me/access-keys".into(),
                Credential::Bearer(&user_token),
                json!({"name": v}),
                Some("/name"),
            ),
            (
                Method::POST,
                "/v1/me/orders".into(),
                Credential::Bearer(&user_token),
                json!({"amount": v}),
                None,
            ),
            (
                Method::POST,
                "/v1/admin/users".into(),
                Credential::Bearer(&admin),
                json!({"email": v, "password": "password-123"}),
                None,
            ),
            (
                Method::PATCH,
                format!("/v1/admin/users/{user_id}"),
                Credential::Bearer(&admin),
                json!({"role": v}),
                None,
            ),
            (
                Method::POST,
                format!("/v1/admin/users/{user_id}/balance-adjustments"),
                Credential::Bearer(&admin),
                json!({"amount": "1", "reason": v}),
                None,
            ),
            (
                Method::POST,
                "/v1/admin/providers".into(),
                Credential::Bearer(&admin),
                json!({"name": v, "kind": "openai", "base_url": "http://127.0.0.1:9"}),
                Some("/name"),
            ),
            (
                Method::POST,
                "/v1/admin/providers".into(),
                Credential::Bearer(&admin),
                json!({"name": format!("p-{what}"), "kind": v, "base_url": v}),
                None,
            ),
            (
                Method::POST,
                format!("/v1/admin/providers/{}/keys", setup.provider_id),
                Credential::Bearer(&admin),
                json!({"api_key": v, "name": v}),
                Some("/name"),
            ),
            (
                Method::POST,
                "/v1/admin/models".into(),
                Credential::Bearer(&admin),
                json!({"name": v, "provider_id": setup.provider_id, "upstream_model": v, "kind": "chat", "pricing": {"input_per_million": "1", "output_per_million": "1"}}),
                Some("/name"),
            ),
            (
                Method::PATCH,
                format!("/v1/admin/models/{}", setup.model_id),
                Credential::Bearer(&admin),
                json!({"upstream_model": v}),
                Some("/upstream_model"),
            ),
            (
                Method::POST,
                "/v1/chat/completions".into(),
                Credential::Bearer(&setup.access_key),
                json!({"model": v, "messages": [{"role": "user", "content": "hi"}]}),
                None,
            ),
            (
                Method::POST,
                "/v1/chat/completions".into(),
                Credential::Bearer(&setup.access_key),
                json!({"model": setup.model, "messages": [{"role": v, "content": v}]}),
                None,
            ),
            (
                Method::POST,
                "/v1/jobs/image-generation".into(),
                Credential::Bearer(&setup.access_key),
                json!({"model": v, "prompt": v}),
                None,
            ),
            (
                Method::POST,
                "/v1/jobs/image-generation".into(),
                Credential::Bearer(&setup.access_key),
                json!({"model": "demo-image", "prompt": v, "size": v, "callback_url": v}),
                None,
            ),
            (
                Method::GET,
                format!("/v1/jobs/{}", urlencode(&v)),
                Credential::Bearer(&setup.access_key),
                Value::Null,
                None,
            ),
            (
                Method::GET,
                format!("/v1/admin/usage-logs?user_id={}", urlencode(&v)),
                Credential::Bearer(&admin),
                Value::Null,
                None,
            ),
            (
                Method::POST,
                format!("/v1/orders/{}/complete", urlencode(&v)),
                Credential::Bearer(&admin),
                json!({}),
                None,
            ),
        ];
        for (method, path, credential, body, echo) in cases {
            let body = (!body.is_null()).then_some(body.clone());
            let sent = body.clone();
            let reply = app.send(method.clone(), &path, credential, body).await;
            requests += 1;
            let status = reply.status.as_u16();
            let label = format!("{what}: {method} {}", &path[..path.len().min(80)]);
            if status >= 500 {
                failures.push(format!(
                    "{label} -> {status} {}",
                    &reply.text[..reply.text.len().min(200)]
                ));
                continue;
            }
            if reply.status.is_success()
                && let (Some(pointer), Some(sent)) = (echo, sent)
            {
                let field = pointer.trim_start_matches('/');
                let expected = sent.get(field).cloned().unwrap_or(Value::Null);
                if reply.json.pointer(pointer) != Some(&expected) {
                    failures.push(format!("{label}: stored {:?}", reply.json.pointer(pointer)));
                }
                stored += 1;
            } else if !reply.status.is_success() {
                assert!(
                    reply.json["error"]["code"].is_string(),
                    "{label}: {}",
                    reply.text
                );
            }
        }
    }
    println!(
        "hostile text: {requests} requests, {stored} stored verbatim, {} 5xx",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    app.get("/v1/me", &user_token).await.assert_status(200);
}

fn urlencode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes().take(2000) {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
