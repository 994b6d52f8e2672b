use integration_tests::{Credential, spawn_app};
use reqwest::Method;

#[tokio::test(flavor = "multi_thread")]
async fn health_ready_metrics_and_docs_answer() {
    let app = spawn_app().await;
    let health = app
        .send(Method::GET, "/healthz", Credential::None, None)
        .await;
    assert_eq!(health.assert_status(200)["status"], "ok");
    let ready = app
        .send(Method::GET, "/readyz", Credential::None, None)
        .await;
    assert_eq!(ready.assert_status(200)["status"], "ready");
    // /metrics on the API port: admins only.
    app.send(Method::GET, "/metrics", Credential::None, None)
        .await
        .assert_error(401, "unauthorized");
    let (_, user_token) = app.new_user().await;
    app.send(
        Method::GET,
        "/metrics",
        Credential::Bearer(&user_token),
        None,
    )
    .await
    .assert_error(403, "forbidden");
    let metrics = app
        .send(
            Method::GET,
            "/metrics",
            Credential::Bearer(app.admin_token()),
            None,
        )
        .await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text.contains("http_requests_total"),
        "{}",
        metrics.text
    );

    let spec = app
        .send(Method::GET, "/openapi.json", Credential::None, None)
        .await;
    let schemas = &spec.assert_status(200)["components"]["schemas"];
    for schema in ["PricingSchema", "PriceTierSchema"] {
        assert!(schemas.get(schema).is_some(), "openapi.json lacks {schema}");
    }
    let paths = spec.assert_status(200)["paths"]
        .as_object()
        .unwrap()
        .clone();
    for path in [
        "/v1/auth/register",
        "/v1/auth/login",
        "/v1/me",
        "/v1/me/access-keys",
        "/v1/me/access-keys/{id}",
        "/v1/me/webhook-secret",
        "/v1/me/orders",
        "/v1/me/ledger",
        "/v1/me/usage",
        "/v1/orders/{order_no}/complete",
        "/v1/payments/callback",
        "/v1/admin/users",
        "/v1/admin/users/{id}",
        "/v1/admin/users/{id}/balance-adjustments",
        "/v1/admin/providers",
        "/v1/admin/providers/{id}",
        "/v1/admin/providers/{id}/keys",
        "/v1/admin/provider-keys/{id}",
        "/v1/admin/models",
        "/v1/admin/models/{id}",
        "/v1/admin/orders",
        "/v1/admin/usage-logs",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/messages",
        "/v1/embeddings",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "openapi.json lacks {path}");
    }
    let docs = app
        .send(Method::GET, "/docs/", Credential::None, None)
        .await;
    assert_eq!(docs.status, 200);
    assert!(
        docs.text.contains("swagger"),
        "the docs page is not Swagger UI"
    );
    // The UI's assets are served by us, not fetched from a CDN.
    assert!(!docs.text.contains("cdn."), "docs must work offline");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_response_carries_a_request_id_and_unknown_routes_are_json_404() {
    let app = spawn_app().await;
    let reply = app
        .send(Method::GET, "/no/such/route", Credential::None, None)
        .await;
    reply.assert_error(404, "not_found");
    // A known path under a method it does not take: 405 with `Allow` (found by schemathesis).
    for (method, path, allow) in [
        (Method::PUT, "/v1/me", "GET, HEAD"),
        (Method::DELETE, "/v1/jobs/image-generation", "POST"),
        (
            Method::POST,
            "/v1/admin/users/7",
            "DELETE, GET, HEAD, PATCH",
        ),
        (Method::PUT, "/v1/admin/access-keys/7", "PATCH"),
    ] {
        let token = Credential::Bearer(app.admin_token());
        let refused = app.send(method, path, token, None).await;
        assert_eq!(refused.status, 405, "{path}: {}", refused.text);
        refused.assert_error(405, "method_not_allowed");
        assert_eq!(refused.headers["allow"], allow, "{path}");
    }
    let generated = reply
        .headers
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 36);

    let echoed = app
        .client
        .get(format!("{}/healthz", app.address))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-abc-123");

    let wrong_method = app
        .send(Method::PUT, "/v1/me", Credential::None, None)
        .await;
    assert!(
        wrong_method.json["error"]["code"].is_string(),
        "{}",
        wrong_method.text
    );
}

#[test]
fn settings_out_of_range_are_refused_at_start() {
    let valid = integration_tests::test_settings("postgres://unused".to_owned());
    assert!(valid.validate().is_ok());
    for holds_in_flight in [0, 65] {
        let mut settings = valid.clone();
        settings.calls.holds_in_flight = holds_in_flight;
        let error = settings.validate().unwrap_err().to_string();
        assert!(error.contains("calls.holds_in_flight"), "{error}");
    }
    let mut settings = valid.clone();
    settings.calls.holds_in_flight = 64;
    assert!(settings.validate().is_ok());
    for (proxies, ok) in [
        ("10.0.0.0/8, 192.168.1.1, fd00::/8", true),
        ("", true),
        ("10.0.0.0/33", false),
        ("proxy.internal", false),
    ] {
        let mut settings = valid.clone();
        settings.abuse.trusted_proxies = proxies.to_owned();
        let outcome = settings.validate().map_err(|e| e.to_string());
        assert_eq!(outcome.is_ok(), ok, "{proxies}: {outcome:?}");
        if let Err(error) = outcome {
            assert!(error.contains("abuse.trusted_proxies"), "{error}");
        }
    }
    let mut settings = valid.clone();
    settings.abuse.hashes_in_flight = 0;
    assert!(settings.validate().is_err());
    for runtime_threads in [0, 65] {
        let mut settings = valid.clone();
        settings.runtime_threads = runtime_threads;
        let error = settings.validate().unwrap_err().to_string();
        assert!(error.contains("runtime_threads"), "{error}");
    }
}

/// With `server.ops_port`, /healthz, /readyz and /metrics are served there without credentials
/// (for Prometheus), while the API port keeps /metrics for admins.
#[tokio::test(flavor = "multi_thread")]
async fn the_ops_port_serves_metrics_without_credentials() {
    let mut settings = integration_tests::test_settings(integration_tests::create_database().await);
    settings.server.ops_port = Some(0);
    let app = gateway_api::Application::build(settings).await.unwrap();
    let ops = app.ops_port().expect("ops port bound");
    let api = app.port();
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let reply = client
            .get(format!("http://127.0.0.1:{ops}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{path}");
    }
    let public = client
        .get(format!("http://127.0.0.1:{api}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 401);
}
