//! Job webhooks: each user's own signing secret (one tenant cannot forge another's), its
//! rotation, and the SSRF guard at delivery (every blocked range, and a name rebound to
//! loopback after it was checked).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use integration_tests::{
    ChatSetup, Credential, InvocationWorker, ReceivedWebhook, Reply, TestApp, WebhookReceiver,
    eventually, invocation_settings, spawn_app, spawn_app_with,
};
use persistence::jobs::WebhookDelivery;
use persistence::schema::webhook_deliveries;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

async fn setup(app: &TestApp) -> ChatSetup {
    let mock = mock_llm::start(mock_llm::MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap();
    app.chat_setup(mock, &[("good-key", 1)], "1").await
}

/// Another user with a balance of 1 and an access key: (token, access key).
async fn second_user(app: &TestApp) -> (String, String) {
    let (_, token, key) = app.funded_user("1").await;
    (token, key)
}

async fn submit_hooked(app: &TestApp, key: &str, url: &str) -> Reply {
    app.send(
        Method::POST,
        "/v1/jobs/image-generation",
        Credential::Bearer(key),
        Some(json!({"model": "demo-image", "prompt": "hook", "callback_url": url})),
    )
    .await
}

async fn job_id(reply: Reply) -> String {
    reply.assert_status(202)["job_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn verifies(hook: &ReceivedWebhook, secret: &str) -> bool {
    let header = hook.signature.clone().expect("signed");
    let (t, v1) = header.split_once(",v1=").unwrap();
    domain::signature::verify(
        secret.as_bytes(),
        t.trim_start_matches("t="),
        &hook.body,
        v1,
    )
}

fn hook_job(hook: &ReceivedWebhook) -> String {
    let job: Value = serde_json::from_slice(&hook.body).unwrap();
    job["job_id"].as_str().unwrap().to_owned()
}

/// The first webhook received for `job_id`.
async fn hook_for(receiver: &WebhookReceiver, job_id: &str) -> ReceivedWebhook {
    eventually(20, || async {
        receiver
            .received()
            .into_iter()
            .find(|hook| hook_job(hook) == job_id)
    })
    .await
}

async fn delivery(app: &TestApp, job_id: &str) -> Option<WebhookDelivery> {
    let job_id: Uuid = job_id.parse().unwrap();
    let mut conn = app.pool.get().await.unwrap();
    webhook_deliveries::table
        .filter(webhook_deliveries::job_id.eq(job_id))
        .select(WebhookDelivery::as_select())
        .first(&mut conn)
        .await
        .optional()
        .unwrap()
}

/// Waits until every attempt of the job's webhook has been made and failed; answers the
/// last error.
async fn delivery_refused(app: &TestApp, job_id: &str, max_attempts: i32) -> String {
    eventually(30, || async {
        let d = delivery(app, job_id).await?;
        assert!(d.delivered_at.is_none(), "delivered to {}", d.url);
        (d.attempts >= max_attempts).then_some(d.last_error.unwrap_or_default())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_users_webhooks_verify_only_with_that_users_own_secret() {
    let app = spawn_app().await;
    let worker = InvocationWorker::start(&app).await;
    let a = setup(&app).await;
    let (b_token, b_key) = second_user(&app).await;
    let receiver = WebhookReceiver::start(0).await;

    // No secret yet: a job with a callback is refused at submission and nothing is written.
    let status = app.get("/v1/me/webhook-secret", &a.token).await;
    assert_eq!(
        status.assert_status(200),
        &json!({"exists": false, "created_at": null})
    );
    let refused = submit_hooked(&app, &a.access_key, &receiver.url).await;
    refused.assert_error(400, "invalid_request");
    let message = refused.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("/v1/me/webhook-secret"), "{message}");
    assert_eq!(app.count("async_jobs").await, 0);
    assert_eq!(app.count("balance_holds").await, 0);

    let created = app.post("/v1/me/webhook-secret", &a.token, json!({})).await;
    assert_eq!(created.headers["cache-control"], "no-store");
    let secret_a = created.assert_status(201)["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(secret_a.starts_with("whsec_"), "{secret_a}");
    let secret_b = app.webhook_secret(&b_token).await;
    assert_ne!(secret_a, secret_b);
    let status = app.get("/v1/me/webhook-secret", &a.token).await;
    assert_eq!(status.assert_status(200)["exists"], true);
    assert_eq!(status.json["created_at"], created.json["created_at"]);

    let job_a = job_id(submit_hooked(&app, &a.access_key, &receiver.url).await).await;
    let job_b = job_id(submit_hooked(&app, &b_key, &receiver.url).await).await;
    let hook_a = hook_for(&receiver, &job_a).await;
    let hook_b = hook_for(&receiver, &job_b).await;
    assert!(verifies(&hook_a, &secret_a) && !verifies(&hook_a, &secret_b));
    assert!(verifies(&hook_b, &secret_b) && !verifies(&hook_b, &secret_a));

    // Rotation: the new secret signs from now on, the old one no longer verifies.
    let rotated = app.webhook_secret(&a.token).await;
    assert_ne!(rotated, secret_a);
    let job_a2 = job_id(submit_hooked(&app, &a.access_key, &receiver.url).await).await;
    let hook_a2 = hook_for(&receiver, &job_a2).await;
    assert!(verifies(&hook_a2, &rotated) && !verifies(&hook_a2, &secret_a));

    // The value is in no answer (the user's, an admin's) and not in the database in clear.
    let admin = app.admin_token().to_owned();
    let mut seen = String::new();
    for (path, token) in [
        ("/v1/me".to_owned(), a.token.clone()),
        ("/v1/me/webhook-secret".to_owned(), a.token.clone()),
        ("/v1/me/access-keys".to_owned(), a.token.clone()),
        ("/v1/admin/users".to_owned(), admin.clone()),
        (format!("/v1/admin/users/{}", a.user_id), admin.clone()),
        ("/v1/admin/jobs".to_owned(), admin.clone()),
    ] {
        let reply = app.get(&path, &token).await;
        reply.assert_status(200);
        seen.push_str(&reply.json.to_string());
    }
    for path in ["/v1/jobs".to_owned(), format!("/v1/jobs/{job_a2}")] {
        let reply = app
            .send(Method::GET, &path, Credential::Bearer(&a.access_key), None)
            .await;
        reply.assert_status(200);
        seen.push_str(&reply.json.to_string());
    }
    let mut conn = app.pool.get().await.unwrap();
    let sealed: Vec<Vec<u8>> = persistence::schema::webhook_secrets::table
        .select(persistence::schema::webhook_secrets::sealed)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        sealed.len(),
        2,
        "one secret per user, the rotated one replaced"
    );
    for secret in [&secret_a, &secret_b, &rotated] {
        assert!(!seen.contains(secret.as_str()), "{secret} shown again");
        assert!(
            !sealed
                .iter()
                .any(|s| s.windows(20).any(|w| w == &secret.as_bytes()[6..26])),
            "stored in clear"
        );
    }
    worker.stop().await;
}

/// A webhook is signed with the secret current when it is sent: one queued (here: being
/// retried) across a rotation goes out signed with the new secret.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_applies_to_webhooks_already_queued() {
    let app = spawn_app().await;
    let mut settings = invocation_settings(&app);
    settings.webhooks.retry_base_ms = 1_000;
    let worker = InvocationWorker::start_with(settings).await;
    let s = setup(&app).await;
    let old = app.webhook_secret(&s.token).await;
    let receiver = WebhookReceiver::start(2).await;
    let job = job_id(submit_hooked(&app, &s.access_key, &receiver.url).await).await;
    let first = hook_for(&receiver, &job).await;
    assert!(verifies(&first, &old));
    // Rotated while the delivery waits for its retry (the first retry comes 1 s later).
    let new = app.webhook_secret(&s.token).await;
    let delivered = eventually(20, || async {
        receiver.received().into_iter().find(|h| h.answered == 200)
    })
    .await;
    assert!(verifies(&delivered, &new) && !verifies(&delivered, &old));
    worker.stop().await;
}

/// Every blocked range, given as a literal address: the gateway here lets private targets
/// through (as a misconfigured or older replica might), the worker does not. Each delivery
/// ends refused after its attempts, and the local receiver (the loopback cases point at it)
/// is never reached.
#[tokio::test(flavor = "multi_thread")]
async fn webhooks_to_every_blocked_range_are_refused_at_delivery() {
    let app = spawn_app().await;
    let mut settings = invocation_settings(&app);
    settings.webhooks.allow_private_targets = false;
    settings.webhooks.max_attempts = 1;
    let worker = InvocationWorker::start_with(settings).await;
    let s = setup(&app).await;
    app.webhook_secret(&s.token).await;
    let receiver = WebhookReceiver::start(0).await;
    let port = receiver.port;
    let targets = [
        format!("http://127.0.0.1:{port}/loopback"),
        format!("http://localhost:{port}/loopback-by-name"),
        format!("http://[::ffff:127.0.0.1]:{port}/mapped"),
        format!("http://[::127.0.0.1]:{port}/ipv4-compatible"),
        format!("http://[64:ff9b::7f00:1]:{port}/nat64"),
        format!("http://[2002:7f00:1::1]:{port}/6to4"),
        "http://[::1]/loopback6".to_owned(),
        "http://10.0.0.1/private".to_owned(),
        "http://172.16.0.1/private".to_owned(),
        "http://192.168.1.1/private".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://169.254.1.1/link-local".to_owned(),
        "http://[fe80::1]/link-local6".to_owned(),
        "http://[fd00::1]/unique-local".to_owned(),
        "http://100.64.0.1/cgnat".to_owned(),
        "http://198.18.0.1/benchmarking".to_owned(),
        "http://240.0.0.1/reserved".to_owned(),
        "http://0.0.0.0/unspecified".to_owned(),
    ];
    let mut jobs = Vec::new();
    for url in &targets {
        jobs.push((
            url,
            job_id(submit_hooked(&app, &s.access_key, url).await).await,
        ));
    }
    for (url, job) in &jobs {
        let error = delivery_refused(&app, job, 1).await;
        assert!(error.contains("public address"), "{url}: {error}");
    }
    assert!(
        receiver.received().is_empty(),
        "a blocked address was reached"
    );
    worker.stop().await;
}

/// DNS rebinding end to end: `rebind.test` resolves (through the hosts file both processes
/// read) to a public address when the job is submitted, then to 127.0.0.1, where a receiver
/// waits. The worker checks the name again and refuses it; the delivery ends refused and the
/// receiver is never reached. (The last window, between the worker's check and its connection,
/// is closed by the client's own resolver: `upstream::egress` tests.)
#[tokio::test(flavor = "multi_thread")]
async fn a_name_rebound_to_loopback_after_submission_is_never_reached() {
    let hosts = std::env::temp_dir().join(format!("rebind-{}", Uuid::new_v4().simple()));
    std::fs::write(&hosts, "8.8.8.8 rebind.test\n").unwrap();
    let app = spawn_app_with(|s| {
        s.calls.allow_private_callbacks = false;
        s.calls.callback_hosts_file = Some(hosts.clone());
    })
    .await;
    let s = setup(&app).await;
    app.webhook_secret(&s.token).await;
    let receiver = WebhookReceiver::start(0).await;
    let port = receiver.port;
    let url = format!("http://rebind.test:{port}/hooks/job");
    let job = job_id(submit_hooked(&app, &s.access_key, &url).await).await;

    std::fs::write(&hosts, "127.0.0.1 rebind.test\n").unwrap();
    // The gateway's own check now refuses the name too.
    submit_hooked(&app, &s.access_key, &url)
        .await
        .assert_error(400, "invalid_request");
    let mut settings = invocation_settings(&app);
    settings.webhooks.allow_private_targets = false;
    settings.webhooks.hosts_file = Some(hosts.clone());
    settings.webhooks.max_attempts = 2;
    settings.webhooks.retry_base_ms = 100;
    let worker = InvocationWorker::start_with(settings).await;
    let error = delivery_refused(&app, &job, 2).await;
    assert!(error.contains("public address"), "{error}");
    assert!(
        receiver.received().is_empty(),
        "the rebound name was reached"
    );
    worker.stop().await;
    std::fs::remove_file(&hosts).unwrap();
}
