//! Sign-in and sign-up abuse: throttles that lock out only the attacker's address or the
//! attacked account, the cap on password hashes, the negative cache of unknown access keys.

use integration_tests::{GatewayProcess, Reply, TestApp, spawn_app_with};
use reqwest::Method;
use serde_json::json;

/// Sends a login as if from `client` (behind the trusted proxy 127.0.0.1).
async fn login_from(app: &TestApp, client: &str, email: &str, password: &str) -> Reply {
    login_at(app, &app.address, client, email, password).await
}

/// [`login_from`] to the gateway at `gateway` (another replica on the same database).
async fn login_at(
    app: &TestApp,
    gateway: &str,
    client: &str,
    email: &str,
    password: &str,
) -> Reply {
    let response = app
        .client
        .post(format!("{gateway}/v1/auth/login"))
        .header("x-forwarded-for", client)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    TestApp::read(response).await
}

async fn register_from(app: &TestApp, client: &str) -> Reply {
    let email = format!("r{}@example.com", uuid::Uuid::new_v4().simple());
    let response = app
        .client
        .post(format!("{}/v1/auth/register", app.address))
        .header("x-forwarded-for", client)
        .json(&json!({"email": email, "password": "password-123"}))
        .send()
        .await
        .unwrap();
    TestApp::read(response).await
}

fn retry_after(reply: &Reply) -> u64 {
    reply
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", reply.headers))
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_lock_out_only_the_attacker_and_the_attacked_account() {
    let app = spawn_app_with(|s| {
        s.abuse.failures_per_account = 3;
        s.abuse.failures_per_address = 5;
        s.abuse.backoff_base_ms = 30_000;
        s.abuse.trusted_proxies = "127.0.0.1/32".to_owned();
    })
    .await;
    let (_, victim) = app.register("password-123").await;
    let (_, bystander) = app.register("password-123").await;
    let attacker = "203.0.113.9";

    // The account's 3 free failures, then 429 with Retry-After, before any hashing.
    for _ in 0..3 {
        login_from(&app, attacker, &victim, "wrong-password")
            .await
            .assert_error(401, "unauthorized");
    }
    let refused = login_from(&app, attacker, &victim, "wrong-password").await;
    refused.assert_error(429, "rate_limited");
    assert!(
        (1..=30).contains(&retry_after(&refused)),
        "{:?}",
        refused.headers
    );
    // Even the right password waits out the block (the attacker cannot test guesses).
    login_from(&app, attacker, &victim, "password-123")
        .await
        .assert_error(429, "rate_limited");

    // Another account is not affected, from another address.
    let ok = login_from(&app, "198.51.100.4", &bystander, "password-123").await;
    ok.assert_status(200);
    assert_eq!(ok.headers["cache-control"], "no-store");

    // The attacker's address runs out on other accounts too (3 failures counted so far).
    for _ in 0..2 {
        login_from(&app, attacker, &bystander, "wrong-password")
            .await
            .assert_error(401, "unauthorized");
    }
    login_from(&app, attacker, &bystander, "password-123")
        .await
        .assert_error(429, "rate_limited");
    // ...while the bystander still signs in from elsewhere.
    login_from(&app, "198.51.100.4", &bystander, "password-123")
        .await
        .assert_status(200);

    // An address in X-Forwarded-For before the one the trusted proxy appended is ignored:
    // the attacker cannot pick a fresh address by sending the header itself.
    let spoofed = format!("192.0.2.77, {attacker}");
    login_from(&app, &spoofed, &bystander, "password-123")
        .await
        .assert_error(429, "rate_limited");
}

/// The per-account count lives in Postgres: failures spread over two gateway processes on one
/// database lock the account after the same number as on one, whatever the address; a success
/// on one replica clears the count on both; other accounts still sign in from the same
/// addresses, on both.
#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_spread_over_two_gateways_lock_out_after_the_same_number() {
    let app = spawn_app_with(|s| {
        s.abuse.failures_per_account = 4;
        s.abuse.backoff_base_ms = 30_000;
        s.abuse.trusted_proxies = "127.0.0.1/32".to_owned();
    })
    .await;
    let other = GatewayProcess::spawn_with(
        &app,
        &[
            ("APP__ABUSE__FAILURES_PER_ACCOUNT", "4"),
            ("APP__ABUSE__FAILURES_PER_ADDRESS", "1000000"),
            ("APP__ABUSE__BACKOFF_BASE_MS", "30000"),
            ("APP__ABUSE__TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    )
    .await;
    let gateways = [app.address.clone(), other.address.clone()];
    let (_, victim) = app.register("password-123").await;
    let (_, bystander) = app.register("password-123").await;

    // 4 failures, alternating between the replicas, each from an address of its own (so only
    // the account's count can refuse): all 401. Counted in memory, each replica would allow 4.
    for i in 0..4 {
        let address = format!("203.0.113.{}", 10 + i);
        login_at(&app, &gateways[i % 2], &address, &victim, "wrong-password")
            .await
            .assert_error(401, "unauthorized");
    }
    // The next attempt is refused on both replicas, from fresh addresses, right password too.
    for (i, gateway) in gateways.iter().enumerate() {
        let refused = login_at(
            &app,
            gateway,
            &format!("198.51.100.{i}"),
            &victim,
            "password-123",
        )
        .await;
        refused.assert_error(429, "rate_limited");
        assert!(
            (1..=30).contains(&retry_after(&refused)),
            "{:?}",
            refused.headers
        );
    }
    // Another account signs in on both replicas, from the addresses that failed on the victim.
    for (i, gateway) in gateways.iter().enumerate() {
        login_at(
            &app,
            gateway,
            &format!("203.0.113.{}", 10 + i),
            &bystander,
            "password-123",
        )
        .await
        .assert_status(200);
    }
    // A success on one replica clears the account's count on the other: 3 failures, a
    // success on the first, then 3 more failures on the second are all 401, not 429.
    let fail_three_times = async |gateway: &str| {
        for _ in 0..3 {
            login_at(&app, gateway, "192.0.2.1", &bystander, "wrong-password")
                .await
                .assert_error(401, "unauthorized");
        }
    };
    fail_three_times(&gateways[1]).await;
    login_at(&app, &gateways[0], "192.0.2.1", &bystander, "password-123")
        .await
        .assert_status(200);
    fail_three_times(&gateways[1]).await;
    assert_eq!(
        app.count("login_failures").await,
        2,
        "the victim's and the bystander's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_are_limited_per_address() {
    let app = spawn_app_with(|s| {
        s.abuse.registrations_per_address = 3;
        s.abuse.trusted_proxies = "127.0.0.1/32".to_owned();
    })
    .await;
    let users_before = app.count("users").await;
    for _ in 0..3 {
        register_from(&app, "203.0.113.50").await.assert_status(201);
    }
    let refused = register_from(&app, "203.0.113.50").await;
    refused.assert_error(429, "rate_limited");
    assert!(retry_after(&refused) >= 1);
    assert_eq!(
        app.count("users").await,
        users_before + 3,
        "a refused registration wrote"
    );
    register_from(&app, "203.0.113.51").await.assert_status(201);
}

#[tokio::test(flavor = "multi_thread")]
async fn password_hashes_beyond_the_cap_are_refused_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.auth.bcrypt_cost = 8;
        s.abuse.hashes_in_flight = 1;
        s.abuse.hash_wait_ms = 1;
    })
    .await;
    let logins = (0..16).map(|i| {
        let app = &app;
        async move {
            app.send(
                Method::POST,
                "/v1/auth/login",
                integration_tests::Credential::None,
                Some(
                    json!({"email": format!("nobody{i}@example.com"), "password": "password-123"}),
                ),
            )
            .await
        }
    });
    let replies = futures_util::future::join_all(logins).await;
    let mut throttled = 0;
    for reply in &replies {
        match reply.status.as_u16() {
            401 => {}
            429 => {
                reply.assert_error(429, "rate_limited");
                assert_eq!(retry_after(reply), 1);
                throttled += 1;
            }
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
    assert!(
        throttled > 0,
        "16 concurrent hashes with 1 permit: none refused"
    );
    assert!(throttled < 16, "every hash refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_access_key_is_refused_from_memory() {
    let app = spawn_app_with(|s| s.abuse.unknown_key_cache_ttl_ms = 60_000).await;
    let counted = |text: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with("access_key_unknown_cached_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let metrics = || async {
        app.client
            .get(format!("{}/metrics", app.address))
            .bearer_auth(app.admin_token())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let key = format!("sk-{}", uuid::Uuid::new_v4().simple());
    let before = counted(&metrics().await);
    for _ in 0..3 {
        app.send(
            Method::GET,
            "/v1/models",
            integration_tests::Credential::AccessKeyHeader(&key),
            None,
        )
        .await
        .assert_error(401, "unauthorized");
    }
    let after = counted(&metrics().await);
    assert!(
        after - before >= 2.0,
        "cached refusals: {before} -> {after}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_out_and_a_password_change_end_every_session() {
    let app = spawn_app_with(|s| s.abuse.failures_per_account = 2).await;
    let (_, email) = app.register("password-123").await;
    let first = app.login(&email, "password-123").await;
    let second = app.login(&email, "password-123").await;
    app.get("/v1/me", &first).await.assert_status(200);

    let out = app
        .send(
            Method::POST,
            "/v1/auth/logout",
            integration_tests::Credential::Bearer(&first),
            None,
        )
        .await;
    assert_eq!(out.status.as_u16(), 204, "{}", out.text);
    app.get("/v1/me", &first)
        .await
        .assert_error(401, "unauthorized");
    app.get("/v1/me", &second)
        .await
        .assert_error(401, "unauthorized");
    // Signing in again works; the new session is valid.
    let third = app.login(&email, "password-123").await;
    app.get("/v1/me", &third).await.assert_status(200);

    // A wrong current password is refused, counted, and changes nothing.
    let change = |current: &'static str| {
        let token = third.clone();
        let app = &app;
        async move {
            app.post(
                "/v1/auth/password",
                &token,
                json!({"current_password": current, "new_password": "new-password-456"}),
            )
            .await
        }
    };
    change("wrong-password")
        .await
        .assert_error(403, "forbidden");
    app.post(
        "/v1/auth/password",
        &third,
        json!({"current_password": "password-123", "new_password": "short"}),
    )
    .await
    .assert_error(400, "invalid_request");
    app.get("/v1/me", &third).await.assert_status(200);
    let changed = change("password-123").await;
    assert_eq!(changed.status.as_u16(), 204, "{}", changed.text);
    app.get("/v1/me", &third)
        .await
        .assert_error(401, "unauthorized");
    let fourth = app.login(&email, "new-password-456").await;
    app.get("/v1/me", &fourth).await.assert_status(200);
    let old = app
        .send(
            Method::POST,
            "/v1/auth/login",
            integration_tests::Credential::None,
            Some(json!({"email": email, "password": "password-123"})),
        )
        .await;
    old.assert_error(401, "unauthorized");

    // Wrong current passwords count against the account, with failed logins (the old password
    // above was one): a stolen session cannot guess on.
    let guess = || async {
        app.post(
            "/v1/auth/password",
            &fourth,
            json!({"current_password": "guess-123", "new_password": "new-password-789"}),
        )
        .await
    };
    guess().await.assert_error(403, "forbidden");
    let refused = guess().await;
    refused.assert_error(429, "rate_limited");
    assert!(retry_after(&refused) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_response_carries_the_security_headers_and_api_answers_are_not_stored() {
    let app = spawn_app_with(|s| s.security.hsts_max_age_seconds = 600).await;
    for path in ["/v1/me", "/healthz", "/no-such-route", "/"] {
        let reply = app
            .send(Method::GET, path, integration_tests::Credential::None, None)
            .await;
        let h = &reply.headers;
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        // The console's page has a policy of its own, which forbids framing too.
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(
            h["strict-transport-security"], "max-age=600; includeSubDomains",
            "{path}"
        );
    }
    let (_, token) = app.new_user().await;
    let key = app
        .post("/v1/me/access-keys", &token, json!({"name": "k"}))
        .await;
    key.assert_status(201);
    assert_eq!(key.headers["cache-control"], "no-store");
    let plain = integration_tests::spawn_app().await;
    let reply = plain
        .send(
            Method::GET,
            "/healthz",
            integration_tests::Credential::None,
            None,
        )
        .await;
    assert!(reply.headers.get("strict-transport-security").is_none());
}
