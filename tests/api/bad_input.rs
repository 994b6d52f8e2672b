//! Every class of bad input answers 400 or 413 in the API.md error format and writes nothing.

use integration_tests::{BODY_LIMIT, Credential, Reply, TestApp, spawn_app};
use reqwest::Method;
use serde_json::json;

/// The error body of API.md, and a JSON content type.
fn assert_json_error(reply: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(reply.status.as_u16(), status, "{what} -> {}", reply.text);
    reply.assert_error(status, code);
    let content_type = reply
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "{what}: content-type {content_type:?}"
    );
    assert!(
        reply.headers.contains_key("x-request-id"),
        "{what}: no request id"
    );
}

async fn balance(app: &TestApp, token: &str) -> String {
    app.get("/v1/me", token).await.assert_status(200)["balance"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_order_amounts_answer_400_and_write_nothing() {
    let app = spawn_app().await;
    let (user_id, token) = app.new_user().await;
    app.top_up(&token, "3.5").await;
    let before = app.snapshot().await;
    let balance_before = balance(&app, &token).await;
    assert_eq!(balance_before, "3.5");

    let json = "application/json";
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("malformed JSON", json, br#"{"amount":"#.to_vec()),
        ("empty body", json, Vec::new()),
        ("trailing garbage", json, br#"{"amount":"10"} x"#.to_vec()),
        ("invalid UTF-8", json, b"{\"amount\":\"1\xff\"}".to_vec()),
        ("text/plain", "text/plain", br#"{"amount":"10"}"#.to_vec()),
        (
            "form encoded",
            "application/x-www-form-urlencoded",
            b"amount=10".to_vec(),
        ),
        ("array", json, br#"[{"amount":"10"}]"#.to_vec()),
        ("bare string", json, br#""10""#.to_vec()),
        ("boolean", json, br#"{"amount":true}"#.to_vec()),
        ("object", json, br#"{"amount":{}}"#.to_vec()),
        ("array value", json, br#"{"amount":[]}"#.to_vec()),
        ("null", json, br#"{"amount":null}"#.to_vec()),
        ("missing field", json, br#"{}"#.to_vec()),
        ("misspelt field", json, br#"{"amout":"10"}"#.to_vec()),
        (
            "unknown extra field",
            json,
            br#"{"amount":"10","user_id":1}"#.to_vec(),
        ),
        (
            "duplicate field",
            json,
            br#"{"amount":"1","amount":"2"}"#.to_vec(),
        ),
        ("negative string", json, br#"{"amount":"-5"}"#.to_vec()),
        ("negative number", json, br#"{"amount":-5}"#.to_vec()),
        ("negative zero", json, br#"{"amount":"-0"}"#.to_vec()),
        ("zero string", json, br#"{"amount":"0"}"#.to_vec()),
        ("zero number", json, br#"{"amount":0}"#.to_vec()),
        ("zero with decimals", json, br#"{"amount":"0.00"}"#.to_vec()),
        (
            "three decimals string",
            json,
            br#"{"amount":"10.001"}"#.to_vec(),
        ),
        (
            "three decimals number",
            json,
            br#"{"amount":10.001}"#.to_vec(),
        ),
        (
            "one cent and a bit",
            json,
            br#"{"amount":"0.011"}"#.to_vec(),
        ),
        ("NaN", json, br#"{"amount":"NaN"}"#.to_vec()),
        ("Infinity", json, br#"{"amount":"Infinity"}"#.to_vec()),
        ("-Infinity", json, br#"{"amount":"-Infinity"}"#.to_vec()),
        ("exponent string", json, br#"{"amount":"1e3"}"#.to_vec()),
        ("exponent number", json, br#"{"amount":1e3}"#.to_vec()),
        (
            "huge exponent number",
            json,
            br#"{"amount":1e309}"#.to_vec(),
        ),
        ("bare NaN token", json, br#"{"amount":NaN}"#.to_vec()),
        (
            "absurdly large string",
            json,
            br#"{"amount":"99999999999999999999999"}"#.to_vec(),
        ),
        (
            "absurdly large number",
            json,
            br#"{"amount":99999999999999999999999}"#.to_vec(),
        ),
        (
            "one cent above the max",
            json,
            br#"{"amount":"10000.01"}"#.to_vec(),
        ),
        ("above the max", json, br#"{"amount":"10001"}"#.to_vec()),
        (
            "above the max as a number",
            json,
            br#"{"amount":10000.01}"#.to_vec(),
        ),
        ("empty string", json, br#"{"amount":""}"#.to_vec()),
        ("leading space", json, br#"{"amount":" 5"}"#.to_vec()),
        ("trailing space", json, br#"{"amount":"5 "}"#.to_vec()),
        ("plus sign", json, br#"{"amount":"+5"}"#.to_vec()),
        ("leading dot", json, br#"{"amount":".5"}"#.to_vec()),
        ("trailing dot", json, br#"{"amount":"5."}"#.to_vec()),
        ("comma", json, br#"{"amount":"5,00"}"#.to_vec()),
        ("hex", json, br#"{"amount":"0x10"}"#.to_vec()),
        ("currency sign", json, br#"{"amount":"$5"}"#.to_vec()),
    ];
    for (what, content_type, body) in cases {
        let reply = app
            .send_raw(
                Method::POST,
                "/v1/me/orders",
                Some(&token),
                content_type,
                body,
            )
            .await;
        assert_json_error(&reply, 400, "invalid_request", what);
    }
    assert_eq!(app.snapshot().await, before);
    assert_eq!(balance(&app, &token).await, balance_before);
    let (stored, sum) = app.balance_and_ledger_sum(user_id).await;
    assert_eq!(stored, sum);

    // The accepted edges, exact.
    for (body, amount) in [
        (r#"{"amount":"10.5"}"#, "10.5"),
        (r#"{"amount":10.25}"#, "10.25"),
        (r#"{"amount":"10000"}"#, "10000"),
        (r#"{"amount":10000.00}"#, "10000"),
        (r#"{"amount":"0.01"}"#, "0.01"),
        (r#"{"amount":"007.10"}"#, "7.1"),
    ] {
        let reply = app
            .send_raw(
                Method::POST,
                "/v1/me/orders",
                Some(&token),
                json,
                body.as_bytes().to_vec(),
            )
            .await;
        assert_eq!(reply.status, 201, "{body} -> {}", reply.text);
        assert_eq!(reply.json["amount"], amount, "{body}");
        assert_eq!(reply.json["status"], "PENDING");
    }
    // Orders do not move the balance until paid.
    assert_eq!(app.count("orders").await, 1 + 6);
    assert_eq!(balance(&app, &token).await, balance_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_answer_413_in_json_and_write_nothing() {
    let app = spawn_app().await;
    let (_, token) = app.new_user().await;
    let admin = app.admin_token().to_owned();
    let before = app.snapshot().await;

    // Valid JSON, just too big: one byte over the limit, and far over it.
    let padded = |size: usize| {
        let head = r#"{"amount":"10","pad":""#;
        let tail = r#""}"#;
        let mut body = head.as_bytes().to_vec();
        body.resize(size - tail.len(), b'x');
        body.extend_from_slice(tail.as_bytes());
        assert_eq!(body.len(), size);
        body
    };
    for size in [BODY_LIMIT + 1, 4 * BODY_LIMIT] {
        let reply = app
            .send_raw(
                Method::POST,
                "/v1/me/orders",
                Some(&token),
                "application/json",
                padded(size),
            )
            .await;
        assert_json_error(
            &reply,
            413,
            "payload_too_large",
            &format!("{size} bytes to /v1/me/orders"),
        );
        let reply = app
            .send_raw(
                Method::POST,
                "/v1/admin/providers",
                Some(&admin),
                "application/json",
                padded(size),
            )
            .await;
        assert_json_error(
            &reply,
            413,
            "payload_too_large",
            &format!("{size} bytes to /v1/admin/providers"),
        );
    }
    // Without a Content-Length (chunked), the limit holds while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = padded(2 * BODY_LIMIT)
        .chunks(4096)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let response = app
        .client
        .post(format!("{}/v1/me/orders", app.address))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let reply = TestApp::read(response).await;
    assert_json_error(
        &reply,
        413,
        "payload_too_large",
        "chunked body to /v1/me/orders",
    );

    // Just under the limit is read (and refused for its unknown field, not its size).
    let reply = app
        .send_raw(
            Method::POST,
            "/v1/me/orders",
            Some(&token),
            "application/json",
            padded(BODY_LIMIT),
        )
        .await;
    assert_json_error(
        &reply,
        400,
        "invalid_request",
        "a body of exactly the limit",
    );

    // The payment callback has its own, smaller limit (16 KiB), before any signature check.
    for size in [16 * 1024 + 1, BODY_LIMIT + 1, 4 * BODY_LIMIT] {
        let body = padded(size);
        let reply = app
            .send_raw(
                Method::POST,
                "/v1/payments/callback",
                None,
                "application/json",
                body,
            )
            .await;
        assert_json_error(
            &reply,
            413,
            "payload_too_large",
            &format!("{size} bytes to the callback"),
        );
    }
    assert_eq!(app.snapshot().await, before);
    assert_eq!(balance(&app, &token).await, "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn balance_adjustment_amounts_beyond_eight_decimals_are_refused() {
    let app = spawn_app().await;
    let (user_id, token) = app.new_user().await;
    app.top_up(&token, "5").await;
    let before = app.snapshot().await;
    let path = format!("/v1/admin/users/{user_id}/balance-adjustments");
    for amount in [
        r#""1.000000001""#,
        "1.000000001",
        r#""-0.000000001""#,
        r#""1e2""#,
        "1e2",
        r#""NaN""#,
        r#""""#,
        r#"" 1""#,
        r#""1000000000000000000""#,
        "true",
        "null",
    ] {
        let body = format!(r#"{{"amount":{amount},"reason":"test"}}"#);
        let reply = app
            .send_raw(
                Method::POST,
                &path,
                Some(app.admin_token()),
                "application/json",
                body.into_bytes(),
            )
            .await;
        assert_json_error(&reply, 400, "invalid_request", amount);
    }
    assert_eq!(app.snapshot().await, before);
    assert_eq!(balance(&app, &token).await, "5");
    let (stored, sum) = app.balance_and_ledger_sum(user_id).await;
    assert_eq!(stored, sum);

    // Eight decimals are fine, and exact.
    let reply = app
        .post(
            &path,
            app.admin_token(),
            json!({"amount": "0.00000001", "reason": "smallest unit"}),
        )
        .await;
    assert_eq!(reply.assert_status(200)["user"]["balance"], "5.00000001");
    // Trailing zeros beyond the eighth decimal are not significant.
    let reply = app
        .post(
            &path,
            app.admin_token(),
            json!({"amount": "1.0000000000", "reason": "trailing zeros"}),
        )
        .await;
    assert_eq!(reply.assert_status(200)["ledger_entry"]["delta"], "1");
    assert_eq!(balance(&app, &token).await, "6.00000001");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_paths_and_query_strings_answer_400_in_json() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let (_, token) = app.new_user().await;
    let before = app.snapshot().await;

    for path in [
        "/v1/admin/users/abc",
        "/v1/admin/users/1.5",
        "/v1/admin/users/99999999999999999999",
        "/v1/admin/providers/abc",
        "/v1/admin/models/-",
    ] {
        let reply = app.get(path, admin).await;
        assert_json_error(&reply, 400, "invalid_request", path);
    }
    let reply = app
        .patch("/v1/admin/users/abc", admin, json!({"role": "admin"}))
        .await;
    assert_json_error(&reply, 400, "invalid_request", "PATCH /v1/admin/users/abc");
    let reply = app.delete("/v1/admin/provider-keys/abc", admin).await;
    assert_json_error(
        &reply,
        400,
        "invalid_request",
        "DELETE /v1/admin/provider-keys/abc",
    );
    let reply = app
        .post(
            "/v1/admin/users/abc/balance-adjustments",
            admin,
            json!({"amount": "1", "reason": "r"}),
        )
        .await;
    assert_json_error(&reply, 400, "invalid_request", "balance adjustment of /abc");
    let reply = app.delete("/v1/me/access-keys/abc", &token).await;
    assert_json_error(
        &reply,
        400,
        "invalid_request",
        "DELETE /v1/me/access-keys/abc",
    );

    for query in [
        "limit=0",
        "limit=201",
        "limit=-1",
        "limit=abc",
        "limit=",
        "limit=1.5",
        "limit=99999999999999999999",
        "offset=-1",
        "offset=abc",
        "foo=1",
        "user_id=1",
    ] {
        for base in ["/v1/admin/users", "/v1/admin/providers", "/v1/admin/models"] {
            let path = format!("{base}?{query}");
            let reply = app.get(&path, admin).await;
            assert_json_error(&reply, 400, "invalid_request", &path);
        }
        for base in [
            "/v1/me/orders",
            "/v1/me/ledger",
            "/v1/me/usage",
            "/v1/me/access-keys",
        ] {
            let path = format!("{base}?{query}");
            let reply = app.get(&path, &token).await;
            assert_json_error(&reply, 400, "invalid_request", &path);
        }
    }
    for query in [
        "user_id=abc",
        "user_id=",
        "limit=0&user_id=1",
        "status=PENDING",
    ] {
        for base in ["/v1/admin/orders", "/v1/admin/usage-logs"] {
            let path = format!("{base}?{query}");
            let reply = app.get(&path, admin).await;
            assert_json_error(&reply, 400, "invalid_request", &path);
        }
    }
    // The bounds themselves are accepted.
    for query in ["limit=1", "limit=200", "offset=0", "limit=200&offset=5"] {
        let reply = app.get(&format!("/v1/admin/users?{query}"), admin).await;
        reply.assert_status(200);
    }
    let reply = app.get("/v1/admin/users?limit=200", admin).await;
    assert_eq!(reply.json["limit"], 200);
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_registration_fields_are_refused() {
    let app = spawn_app().await;
    let before = app.snapshot().await;
    let long_email = format!("{}@example.com", "a".repeat(10_000 - "@example.com".len()));
    assert_eq!(long_email.len(), 10_000);
    for body in [
        json!({"email": long_email, "password": "password-123"}),
        json!({"email": "long@example.com", "password": "p".repeat(10_000)}),
        json!({"email": format!("a@{}.com", "b".repeat(300)), "password": "password-123"}),
    ] {
        let reply = app
            .send(
                Method::POST,
                "/v1/auth/register",
                Credential::None,
                Some(body),
            )
            .await;
        assert_json_error(&reply, 400, "invalid_request", "huge registration field");
    }
    // The same through the admin route.
    let reply = app
        .post(
            "/v1/admin/users",
            app.admin_token(),
            json!({"email": long_email, "password": "password-123"}),
        )
        .await;
    assert_json_error(
        &reply,
        400,
        "invalid_request",
        "admin creation with a huge email",
    );
    let reply = app
        .send(
            Method::POST,
            "/v1/auth/login",
            Credential::None,
            Some(json!({"email": long_email, "password": "password-123"})),
        )
        .await;
    assert_json_error(&reply, 401, "unauthorized", "login with a huge email");
    assert_eq!(app.snapshot().await, before);
}
