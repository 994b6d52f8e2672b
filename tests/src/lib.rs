//! Test harness: boots the real gateway-api on port 0 against its own fresh Postgres database.

#![allow(clippy::unwrap_used)]

use std::sync::Once;

use base64::Engine;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use gateway_api::Settings;
use gateway_api::settings::{
    AbuseSettings, AuthSettings, BootstrapSettings, CallSettings, OrderSettings, SecuritySettings,
    ServerSettings, StatsSettings,
};
use messaging::BrokerSettings;
use persistence::DatabaseSettings;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const ADMIN_EMAIL: &str = "admin@test.local";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const PAYMENT_SECRET: &str = "whsec_test_0123456789abcdef";
pub const BODY_LIMIT: usize = 64 * 1024;
/// Every test database starts with this, so `make test` can drop leftovers.
pub const TEST_DB_PREFIX: &str = "gwtest_";

static TRACING: Once = Once::new();

/// Creates an empty database with a unique name and returns its URL.
pub async fn create_database() -> String {
    persistence::testing::create_database().await.unwrap()
}

pub fn broker_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Broker settings with a queue prefix of their own, so parallel tests never share queues.
pub fn test_broker_settings() -> BrokerSettings {
    let mut settings = BrokerSettings::new(broker_url());
    settings.queue_prefix = format!("gwtest_{}_", uuid::Uuid::new_v4().simple());
    settings
}

pub fn test_settings(database_url: String) -> Settings {
    let master_key = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    Settings {
        log_format: runtime::telemetry::LogFormat::Pretty,
        run_migrations: true,
        runtime_threads: 1,
        server: ServerSettings {
            host: "127.0.0.1".into(),
            port: 0,
            body_limit_bytes: BODY_LIMIT,
            workers: Some(2),
            ops_port: None,
            shutdown_grace_seconds: 10,
        },
        database: DatabaseSettings {
            url: database_url,
            pool_max_size: 12,
            pool_wait_timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
        },
        auth: AuthSettings {
            jwt_secret: "test-jwt-secret-that-is-long-enough-0123456789"
                .to_owned()
                .into(),
            jwt_ttl_seconds: 3600,
            bcrypt_cost: 4,
        },
        security: SecuritySettings {
            master_key: master_key.into(),
            hsts_max_age_seconds: 0,
        },
        // Tests register many users and try wrong passwords from 127.0.0.1: generous limits
        // here; tests/api/abuse.rs sets tight ones.
        abuse: AbuseSettings {
            failures_per_account: 1_000,
            failures_per_address: 1_000_000,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            forget_after_seconds: 900,
            registrations_per_address: 1_000_000,
            registration_backoff_base_ms: 60_000,
            hashes_in_flight: 4,
            hash_wait_ms: 5_000,
            unknown_key_cache_ttl_ms: 0,
            trusted_proxies: String::new(),
        },
        orders: OrderSettings {
            max_amount: domain::Money::parse("10000").unwrap(),
            payment_webhook_secret: Some(PAYMENT_SECRET.to_owned().into()),
            payment_tolerance_seconds: 300,
        },
        bootstrap: BootstrapSettings {
            admin_email: Some(ADMIN_EMAIL.into()),
            admin_password: Some(ADMIN_PASSWORD.to_owned().into()),
        },
        broker: test_broker_settings(),
        upstream: upstream::UpstreamSettings {
            first_byte_timeout_ms: 5_000,
            total_timeout_ms: 10_000,
            cooldown_base_ms: 500,
            cooldown_max_ms: 5_000,
            ..upstream::UpstreamSettings::default()
        },
        calls: CallSettings {
            hold_ttl_seconds: 60,
            catalog_refresh_ms: 1000,
            allow_private_callbacks: true,
            callback_hosts_file: None,
            billing_batch_max: 256,
            billing_publishes_in_flight: 1, // the shipped default
            // The shipped default: at a test's low rates, charges are kept in the outbox first.
            outbox_first_below: 1500,
            outbox_forward_linger_ms: 20,
            stream_stall_ms: 30_000,
            lease_max_percent: 25,
            lease_min_calls: 32,
            lease_horizon_ms: 2_000,
            lease_idle_ms: 5_000,
            key_cache_ttl_ms: 1000,
            holds_in_flight: 1,
        },
        // Statistics written soon after the calls, so tests see them within a poll or two.
        stats: StatsSettings {
            flush_ms: 200,
            sample_ms: 1000,
            retention_days: 30,
        },
    }
}

pub struct TestApp {
    _cleanup: Cleanup,
    pub address: String,
    pub client: reqwest::Client,
    pub pool: persistence::Pool,
    pub settings: Settings,
    admin_token: String,
}

/// A running gateway-api with its own database, the bootstrap admin signed in.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], with the settings adjusted first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    TRACING.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            runtime::telemetry::init("tests", runtime::telemetry::LogFormat::Pretty);
        }
    });
    let mut settings = test_settings(create_database().await);
    adjust(&mut settings);
    let app = gateway_api::Application::build(settings.clone())
        .await
        .unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let pool = app.pool();
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut test = TestApp {
        _cleanup: Cleanup {
            broker: settings.broker.clone(),
            database_url: settings.database.url.clone(),
        },
        address,
        client,
        pool,
        settings,
        admin_token: String::new(),
    };
    test.admin_token = test.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    test
}

/// A response read whole: status, headers and the JSON body (Null when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    /// Asserts the API.md error body with this status and code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        assert_eq!(
            self.json["error"]["code"], code,
            "unexpected body: {}",
            self.text
        );
        assert!(
            self.json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            self.text
        );
        assert!(self.json["error"]["type"].is_string(), "{}", self.text);
    }

    pub fn assert_status(&self, status: u16) -> &Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        &self.json
    }
}

pub enum Credential<'a> {
    None,
    Bearer(&'a str),
    AccessKeyHeader(&'a str),
}

impl TestApp {
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        credential: Credential<'_>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address));
        request = match credential {
            Credential::None => request,
            Credential::Bearer(token) => request.bearer_auth(token),
            Credential::AccessKeyHeader(key) => request.header("ACCESS-KEY", key),
        };
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::read(request.send().await.unwrap()).await
    }

    /// Sends raw bytes with a content type, for malformed-body tests.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Self::read(request.send().await.unwrap()).await
    }

    pub async fn read(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(Method::GET, path, Credential::Bearer(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Credential::Bearer(token), Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send(Method::PATCH, path, Credential::Bearer(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.send(Method::DELETE, path, Credential::Bearer(token), None)
            .await
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let reply = self
            .send(
                Method::POST,
                "/v1/auth/login",
                Credential::None,
                Some(json!({"email": email, "password": password})),
            )
            .await;
        reply.assert_status(200)["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Registers a fresh user with `password` and returns (user id, email).
    pub async fn register(&self, password: &str) -> (i64, String) {
        let email = format!("u{}@example.com", uuid::Uuid::new_v4().simple());
        let reply = self
            .send(
                Method::POST,
                "/v1/auth/register",
                Credential::None,
                Some(json!({"email": email, "password": password})),
            )
            .await;
        (
            reply.assert_status(201)["user"]["id"].as_i64().unwrap(),
            email,
        )
    }

    /// Registers a fresh user and returns (user id, token).
    pub async fn new_user(&self) -> (i64, String) {
        let (id, email) = self.register("password-123").await;
        (id, self.login(&email, "password-123").await)
    }

    /// A new user credited with `balance` (none when "0"), with an access key: (user id,
    /// session token, access key).
    pub async fn funded_user(&self, balance: &str) -> (i64, String, String) {
        let (user_id, token) = self.new_user().await;
        if balance != "0" {
            self.post(
                &format!("/v1/admin/users/{user_id}/balance-adjustments"),
                self.admin_token(),
                json!({"amount": balance, "reason": "test credit"}),
            )
            .await
            .assert_status(200);
        }
        let key = self
            .post("/v1/me/access-keys", &token, json!({"name": "test"}))
            .await;
        let access_key = key.assert_status(201)["key"].as_str().unwrap().to_owned();
        (user_id, token, access_key)
    }

    /// Credits a user through an order completed by the admin.
    /// Creates (or rotates) the user's webhook signing secret and answers it.
    pub async fn webhook_secret(&self, token: &str) -> String {
        let reply = self.post("/v1/me/webhook-secret", token, json!({})).await;
        reply.assert_status(201)["secret"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn top_up(&self, token: &str, amount: &str) -> Value {
        let order = self
            .post("/v1/me/orders", token, json!({"amount": amount}))
            .await;
        let order_no = order.assert_status(201)["order_no"]
            .as_str()
            .unwrap()
            .to_owned();
        let done = self
            .post(
                &format!("/v1/orders/{order_no}/complete"),
                &self.admin_token,
                json!({}),
            )
            .await;
        done.assert_status(200).clone()
    }

    /// Row count of a table, to prove a failed request wrote nothing.
    pub async fn count(&self, table: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = self.pool.get().await.unwrap();
        let row: Count = diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
            .get_result(&mut conn)
            .await
            .unwrap();
        row.n
    }

    /// Counts of every table a request could write, to compare before and after.
    pub async fn snapshot(&self) -> Vec<(String, i64)> {
        let mut counts = Vec::new();
        for table in [
            "users",
            "providers",
            "provider_keys",
            "llm_models",
            "access_keys",
            "orders",
            "balance_ledger",
            "payment_events",
            "usage_logs",
            "async_jobs",
        ] {
            counts.push((table.to_owned(), self.count(table).await));
        }
        counts
    }

    /// A user's stored balance and the sum of their ledger rows, as exact decimals.
    pub async fn balance_and_ledger_sum(
        &self,
        user_id: i64,
    ) -> (bigdecimal::BigDecimal, bigdecimal::BigDecimal) {
        let mut conn = self.pool.get().await.unwrap();
        let user = persistence::users::find(&mut conn, user_id).await.unwrap();
        let sum = persistence::ledger::sum_for_user(&mut conn, user_id)
            .await
            .unwrap();
        (user.balance, sum)
    }
}

impl TestApp {
    /// The stored row of an access key, to check what the database keeps.
    pub async fn access_key_row(&self, id: i64) -> persistence::access_keys::AccessKey {
        use diesel::{QueryDsl, SelectableHelper};
        use persistence::schema::access_keys;
        let mut conn = self.pool.get().await.unwrap();
        access_keys::table
            .find(id)
            .select(persistence::access_keys::AccessKey::as_select())
            .first(&mut conn)
            .await
            .unwrap()
    }
}

/// Deletes a test's queues and drops its database when the test ends (quorum queues and
/// databases are not free to leave around).
pub struct Cleanup {
    pub broker: BrokerSettings,
    pub database_url: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let settings = self.broker.clone();
        let database_url = self.database_url.clone();
        // Drop may run inside the test's runtime: do the async cleanup on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let names = messaging::queue_names(&settings.queue_prefix);
                let broker = match messaging::Broker::connect(settings).await {
                    Ok(broker) => broker,
                    Err(e) => return eprintln!("queue cleanup: {e}"),
                };
                match broker.open_channel().await {
                    Ok(channel) => {
                        if let Err(e) = messaging::delete_topology(&channel, &names).await {
                            eprintln!("queue cleanup: {e}");
                        }
                        let _ = channel.close().await;
                    }
                    Err(e) => eprintln!("queue cleanup channel: {e}"),
                }
                broker.close().await;
                if let Some((base, name)) = database_url.rsplit_once('/')
                    && name.starts_with(TEST_DB_PREFIX)
                    && let Ok(mut conn) =
                        AsyncPgConnection::establish(&format!("{base}/postgres")).await
                {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = diesel::sql_query(drop).execute(&mut conn).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A worker running in this process until [`Running::stop`].
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Runs `run(stopped)`, where `stopped` resolves when [`Running::stop`] is called.
    fn spawn<F>(
        run: impl FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> F,
    ) -> Running
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(Box::pin(async move {
            let _ = stopped.await;
        })));
        Running {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops consuming, finishes in-flight work, and waits for the worker to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// A billing-worker in this process against the test's database and queues.
pub struct BillingWorker;

impl BillingWorker {
    pub async fn start(app: &TestApp) -> Running {
        let mut settings: billing_worker::Settings =
            runtime::config::load(billing_worker::DEFAULT_CONFIG).unwrap();
        settings.worker.database.url = app.settings.database.url.clone();
        settings.worker.broker = app.settings.broker.clone();
        settings.worker.ops.port = 0;
        settings.billing.sweep_interval_ms = 200;
        let worker = billing_worker::Application::build(settings).await.unwrap();
        Running::spawn(|stopped| async move { worker.run_until(stopped).await.unwrap() })
    }
}

/// The master key of the test settings (base64), for workers that decrypt provider keys.
pub fn test_master_key() -> String {
    base64::engine::general_purpose::STANDARD.encode([42u8; 32])
}

/// Settings of an invocation-worker for this test's database and queues: short leases and
/// retries so takeovers and backoff happen within a test.
pub fn invocation_settings(app: &TestApp) -> invocation_worker::Settings {
    let mut settings: invocation_worker::Settings =
        runtime::config::load(invocation_worker::DEFAULT_CONFIG).unwrap();
    settings.worker.database.url = app.settings.database.url.clone();
    settings.worker.broker = app.settings.broker.clone();
    settings.worker.ops.port = 0;
    settings.security.master_key = test_master_key();
    settings.upstream = upstream::UpstreamSettings {
        first_byte_timeout_ms: 2_000,
        total_timeout_ms: 3_000,
        cooldown_base_ms: 100,
        cooldown_max_ms: 500,
        ..upstream::UpstreamSettings::default()
    };
    settings.jobs.lease_seconds = 4;
    settings.jobs.retry_base_ms = 100;
    settings.jobs.retry_max_ms = 400;
    settings.jobs.max_attempts = 3;
    settings.jobs.stranded_after_seconds = 1;
    settings.jobs.sweep_interval_ms = 200;
    settings.jobs.catalog_refresh_ms = 500;
    settings.webhooks.retry_base_ms = 200;
    settings.webhooks.allow_private_targets = true;
    settings
}

/// An invocation-worker in this process.
pub struct InvocationWorker;

impl InvocationWorker {
    pub async fn start(app: &TestApp) -> Running {
        Self::start_with(invocation_settings(app)).await
    }

    pub async fn start_with(settings: invocation_worker::Settings) -> Running {
        let worker = invocation_worker::Application::build(settings)
            .await
            .unwrap();
        Running::spawn(|stopped| async move { worker.run_until(stopped).await.unwrap() })
    }
}

/// The `id`s of a list answer's rows, in order.
pub fn ids(list: &Value) -> Vec<i64> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_i64().unwrap())
        .collect()
}

/// Polls `check` until it returns `Some`, for up to `seconds`; never a fixed sleep.
pub async fn eventually<T, F, Fut>(seconds: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met within {seconds}s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The mock LLM registered as a provider with one chat model, and a user with an access key.
pub struct ChatSetup {
    pub mock: mock_llm::MockServer,
    pub provider_id: i64,
    pub model: String,
    pub model_id: i64,
    pub user_id: i64,
    pub token: String,
    pub access_key: String,
}

/// Chat pricing of the e2e tests: 0.15 per million prompt tokens, 0.60 per million completion.
pub const INPUT_PER_MILLION: &str = "0.15";
pub const OUTPUT_PER_MILLION: &str = "0.60";
/// Image pricing of the e2e tests.
pub const PER_IMAGE: &str = "0.04";
/// Embedding pricing of the e2e tests (model `demo-embed`, on `openai` providers).
pub const EMBED_INPUT_PER_MILLION: &str = "0.02";

/// API.md's formula at the test chat model's prices, computed by the domain's one formula.
pub fn chat_cost(prompt_tokens: u64, completion_tokens: u64) -> bigdecimal::BigDecimal {
    test_cost(
        domain::Pricing {
            input_per_million: Some(domain::Money::parse(INPUT_PER_MILLION).unwrap()),
            output_per_million: Some(domain::Money::parse(OUTPUT_PER_MILLION).unwrap()),
            ..domain::Pricing::default()
        },
        prompt_tokens,
        completion_tokens,
    )
}

/// API.md's formula at the test embedding model's price.
pub fn embed_cost(prompt_tokens: u64) -> bigdecimal::BigDecimal {
    test_cost(
        domain::Pricing {
            input_per_million: Some(domain::Money::parse(EMBED_INPUT_PER_MILLION).unwrap()),
            ..domain::Pricing::default()
        },
        prompt_tokens,
        0,
    )
}

fn test_cost(
    pricing: domain::Pricing,
    prompt_tokens: u64,
    completion_tokens: u64,
) -> bigdecimal::BigDecimal {
    let usage = domain::Usage {
        prompt_tokens,
        completion_tokens,
        ..domain::Usage::default()
    };
    pricing.cost(&usage).unwrap().into_decimal()
}

impl TestApp {
    /// Registers a started mock LLM with the given provider keys and a priced chat model, then
    /// a user with `balance` and an access key.
    pub async fn chat_setup(
        &self,
        mock: mock_llm::MockServer,
        keys: &[(&str, i32)],
        balance: &str,
    ) -> ChatSetup {
        self.chat_setup_of_kind("openai", mock, keys, balance).await
    }

    /// A mock LLM with the default configuration, registered as a provider of `kind` with one
    /// good key, and a user with 10 (see [`Self::chat_setup_of_kind`]).
    pub async fn mock_setup(&self, kind: &str) -> ChatSetup {
        let mock = mock_llm::start(mock_llm::MockConfig::default(), "127.0.0.1", 0)
            .await
            .unwrap();
        self.chat_setup_of_kind(kind, mock, &[("good-key", 1)], "10")
            .await
    }

    /// [`Self::chat_setup`] with the mock registered as a provider of `kind` (`anthropic`
    /// providers get no image model and no embedding model).
    pub async fn chat_setup_of_kind(
        &self,
        kind: &str,
        mock: mock_llm::MockServer,
        keys: &[(&str, i32)],
        balance: &str,
    ) -> ChatSetup {
        let admin = self.admin_token().to_owned();
        let provider = self
            .post(
                "/v1/admin/providers",
                &admin,
                json!({"name": "mock", "kind": kind, "base_url": mock.base_url()}),
            )
            .await;
        let provider_id = provider.assert_status(201)["id"].as_i64().unwrap();
        for (key, weight) in keys {
            self.post(
                &format!("/v1/admin/providers/{provider_id}/keys"),
                &admin,
                json!({"api_key": key, "weight": weight}),
            )
            .await
            .assert_status(201);
        }
        if kind == "openai" {
            self.post(
                "/v1/admin/models",
                &admin,
                json!({
                    "name": "demo-image", "provider_id": provider_id, "upstream_model": "mock-image",
                    "kind": "image", "pricing": {"per_image": PER_IMAGE}
                }),
            )
            .await
            .assert_status(201);
            self.post(
                "/v1/admin/models",
                &admin,
                json!({
                    "name": "demo-embed", "provider_id": provider_id, "upstream_model": "mock-embed",
                    "kind": "embedding", "pricing": {"input_per_million": EMBED_INPUT_PER_MILLION}
                }),
            )
            .await
            .assert_status(201);
        }
        let model = "demo-chat".to_owned();
        let created = self
            .post(
                "/v1/admin/models",
                &admin,
                json!({
                    "name": model, "provider_id": provider_id, "upstream_model": "mock-gpt", "kind": "chat",
                    "pricing": {"input_per_million": INPUT_PER_MILLION, "output_per_million": OUTPUT_PER_MILLION},
                    "max_output_tokens": 256
                }),
            )
            .await;
        let model_id = created.assert_status(201)["id"].as_i64().unwrap();
        let (user_id, token, access_key) = self.funded_user(balance).await;
        ChatSetup {
            mock,
            provider_id,
            model,
            model_id,
            user_id,
            token,
            access_key,
        }
    }

    /// Waits until billing has settled everything made durable before it was called, so that
    /// a test can then assert what was *not* billed without a fixed sleep: makes one more call
    /// (a provider, model and user of its own, on a mock of its own) and waits for its usage
    /// row and an empty outbox. A charge is durable before its call is answered, so one from an
    /// earlier call was on its way (outbox, then `billing_log_queue`) before this call began.
    pub async fn billing_barrier(&self) {
        let mock = mock_llm::start(mock_llm::MockConfig::default(), "127.0.0.1", 0)
            .await
            .unwrap();
        let admin = self.admin_token().to_owned();
        let n = uuid::Uuid::new_v4().simple().to_string();
        let provider = self
            .post(
                "/v1/admin/providers",
                &admin,
                json!({"name": format!("barrier-{n}"), "kind": "openai", "base_url": mock.base_url()}),
            )
            .await;
        let provider_id = provider.assert_status(201)["id"].as_i64().unwrap();
        self.post(
            &format!("/v1/admin/providers/{provider_id}/keys"),
            &admin,
            json!({"api_key": "barrier-key", "weight": 1}),
        )
        .await
        .assert_status(201);
        let model = format!("barrier-{n}");
        self.post(
            "/v1/admin/models",
            &admin,
            json!({
                "name": model, "provider_id": provider_id, "upstream_model": "mock-gpt", "kind": "chat",
                "pricing": {"input_per_million": INPUT_PER_MILLION, "output_per_million": OUTPUT_PER_MILLION}
            }),
        )
        .await
        .assert_status(201);
        let (user_id, _, access_key) = self.funded_user("1").await;
        self.send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&access_key),
            Some(json!({"model": model, "messages": [{"role": "user", "content": "barrier"}]})),
        )
        .await
        .assert_status(200);
        eventually(30, || async {
            (self.usage_of(user_id).await.len() == 1 && self.count("billing_outbox").await == 0)
                .then_some(())
        })
        .await;
    }

    /// Starts a streaming chat call with `access_key` and hangs up once at least `events`
    /// `data:` events have arrived, like a client that leaves mid-stream.
    pub async fn stream_then_leave(&self, access_key: &str, body: &Value, events: usize) {
        use futures_util::StreamExt;
        let response = self
            .client
            .post(format!("{}/v1/chat/completions", self.address))
            .bearer_auth(access_key)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut stream = response.bytes_stream();
        let mut received = 0;
        while received < events {
            let chunk = stream.next().await.unwrap().unwrap();
            received += String::from_utf8_lossy(&chunk).matches("data: ").count();
        }
    }

    /// Messages waiting in one of this test's queues (e.g. a dead-letter queue).
    pub async fn queue_depth(&self, broker: &messaging::Broker, queue: &str) -> u32 {
        let channel = broker.open_channel().await.unwrap();
        let (_, count, _) = channel
            .queue_declare(
                amqprs::channel::QueueDeclareArguments::new(queue)
                    .passive(true)
                    .finish(),
            )
            .await
            .unwrap()
            .unwrap();
        let _ = channel.close().await;
        count
    }

    /// Rows of `usage_logs` for a user: (prompt, completion, cost).
    pub async fn usage_of(&self, user_id: i64) -> Vec<(i64, i64, bigdecimal::BigDecimal)> {
        use diesel::{ExpressionMethods, QueryDsl};
        use persistence::schema::usage_logs;
        let mut conn = self.pool.get().await.unwrap();
        usage_logs::table
            .filter(usage_logs::user_id.eq(user_id))
            .order(usage_logs::id)
            .select((
                usage_logs::prompt_tokens,
                usage_logs::completion_tokens,
                usage_logs::cost,
            ))
            .load(&mut conn)
            .await
            .unwrap()
    }

    /// Open holds of a user.
    pub async fn open_holds(&self, user_id: i64) -> i64 {
        use diesel::{ExpressionMethods, QueryDsl};
        use persistence::schema::balance_holds;
        let mut conn = self.pool.get().await.unwrap();
        balance_holds::table
            .filter(balance_holds::user_id.eq(user_id))
            .filter(balance_holds::status.eq("open"))
            .count()
            .get_result(&mut conn)
            .await
            .unwrap()
    }

    /// POSTs each `(body, status, words)` to `path` with the access key `key` and asserts the
    /// status and that the error message contains `words`.
    pub async fn assert_refused(&self, path: &str, key: &str, cases: &[(Value, u16, &str)]) {
        for (body, status, words) in cases {
            let reply = self
                .send(
                    Method::POST,
                    path,
                    Credential::Bearer(key),
                    Some(body.clone()),
                )
                .await;
            assert_eq!(reply.status.as_u16(), *status, "{body}: {}", reply.text);
            let message = reply.json["error"]["message"].as_str().unwrap();
            assert!(message.contains(words), "{body}: {message}");
        }
    }

    /// Asserts a user was billed nothing and holds nothing, and the books balance.
    pub async fn assert_nothing_billed(&self, user_id: i64) {
        assert!(
            self.usage_of(user_id).await.is_empty(),
            "usage rows written"
        );
        assert_eq!(self.open_holds(user_id).await, 0, "a hold left open");
        self.assert_books_balance().await;
    }

    /// Asserts every balance equals its ledger and every `held` its open holds.
    pub async fn assert_books_balance(&self) {
        let mut conn = self.pool.get().await.unwrap();
        let mismatches = persistence::billing::reconcile(&mut conn).await.unwrap();
        assert!(mismatches.is_empty(), "reconcile failed: {mismatches:?}");
    }
}

/// A TCP proxy in front of RabbitMQ, so one test can take "the broker" down and bring it back
/// without touching the real broker other tests share.
pub struct BrokerOutage {
    port: u16,
    target: std::net::SocketAddr,
    running: Option<tokio::task::JoinHandle<()>>,
}

impl BrokerOutage {
    pub async fn start() -> BrokerOutage {
        let mut proxy = BrokerOutage {
            port: 0,
            target: "127.0.0.1:5672".parse().unwrap(),
            running: None,
        };
        proxy.restore().await;
        proxy
    }

    /// The broker URL that goes through the proxy.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// A gateway that reaches the broker through this proxy, and gives up on a publish
    /// confirm after a second. Its calls' charges always go to the broker first (never the
    /// outbox first, as they would at a test's low rate), so an outage takes the fallback.
    pub async fn spawn_app_behind(&self) -> TestApp {
        let url = self.url();
        spawn_app_with(|settings| {
            settings.broker.url = url;
            settings.broker.publish_confirm_timeout_ms = 1000;
            settings.calls.outbox_first_below = 0;
        })
        .await
    }

    /// Drops every proxied connection and refuses new ones, as a stopped broker would.
    pub async fn cut(&mut self) {
        if let Some(running) = self.running.take() {
            running.abort();
            let _ = running.await;
        }
    }

    /// Accepts connections again, on the same port.
    pub async fn restore(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(format!("127.0.0.1:{}", self.port).parse().unwrap())
            .unwrap();
        let listener = socket.listen(128).unwrap();
        self.port = listener.local_addr().unwrap().port();
        let target = self.target;
        self.running = Some(tokio::spawn(async move {
            // Connection tasks live in this set: aborting the accept loop drops them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
}

/// One request a [`WebhookReceiver`] got.
#[derive(Debug, Clone)]
pub struct ReceivedWebhook {
    pub signature: Option<String>,
    pub body: Vec<u8>,
    pub answered: u16,
}

/// A tiny HTTP server on 127.0.0.1 that records webhook POSTs; it answers 500 to the first
/// `fail_first` requests, then 200.
pub struct WebhookReceiver {
    pub url: String,
    /// The port of `url` (on 127.0.0.1).
    pub port: u16,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<ReceivedWebhook>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    pub async fn start(fail_first: usize) -> WebhookReceiver {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/hooks/job");
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<ReceivedWebhook>::new()));
        let log = std::sync::Arc::clone(&received);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    break;
                };
                let log = std::sync::Arc::clone(&log);
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Read the head, then as many body bytes as Content-Length says.
                    let (head_end, length) = loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        data.extend_from_slice(&buf[..n]);
                        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&data[..at]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| {
                                    l.strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            break (at + 4, length);
                        }
                    };
                    while data.len() < head_end + length {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            break;
                        }
                        data.extend_from_slice(&buf[..n]);
                    }
                    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
                    let signature = head.lines().find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("x-signature")
                            .then(|| value.trim().to_owned())
                    });
                    let answered = {
                        let mut log = log.lock().unwrap();
                        let answered = if log.len() < fail_first { 500 } else { 200 };
                        log.push(ReceivedWebhook {
                            signature,
                            body: data[head_end..].to_vec(),
                            answered,
                        });
                        answered
                    };
                    let reply = format!(
                        "HTTP/1.1 {answered} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                });
            }
        });
        WebhookReceiver {
            url,
            port,
            received,
            task,
        }
    }

    pub fn received(&self) -> Vec<ReceivedWebhook> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A binary of this workspace (`make test` builds them first with `cargo build --bins`).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/<test> → target/debug/<name>
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --bins` (make test does)",
        path.display()
    );
    path
}

/// An invocation-worker as its own process, configured like [`invocation_settings`].
pub fn spawn_invocation_worker_process(app: &TestApp) -> std::process::Child {
    let s = invocation_settings(app);
    std::process::Command::new(workspace_binary("invocation-worker"))
        .env("APP__DATABASE__URL", &s.worker.database.url)
        .env("APP__BROKER__URL", &s.worker.broker.url)
        .env("APP__BROKER__QUEUE_PREFIX", &s.worker.broker.queue_prefix)
        .env("APP__SECURITY__MASTER_KEY", test_master_key())
        .env("APP__OPS__PORT", "0")
        .env("APP__JOBS__LEASE_SECONDS", s.jobs.lease_seconds.to_string())
        .env("APP__JOBS__RETRY_BASE_MS", "100")
        .env("APP__JOBS__SWEEP_INTERVAL_MS", "200")
        .env("APP__JOBS__STRANDED_AFTER_SECONDS", "1")
        .env("APP__UPSTREAM__TOTAL_TIMEOUT_MS", "3000")
        .env("APP__UPSTREAM__FIRST_BYTE_TIMEOUT_MS", "2000")
        .env("APP__SHUTDOWN_GRACE_SECONDS", "10")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap()
}

/// The status of a job straight from the database.
pub async fn job_status(app: &TestApp, job_id: uuid::Uuid) -> String {
    let mut conn = app.pool.get().await.unwrap();
    persistence::jobs::find(&mut conn, job_id)
        .await
        .unwrap()
        .0
        .status
        .as_str()
        .to_owned()
}

/// The gateway-api binary the process helpers run: this workspace's, or the one named by
/// `TEST_GATEWAY_API_BIN` (to see what a test catches in another build of the gateway).
pub fn gateway_api_binary() -> std::path::PathBuf {
    match std::env::var_os("TEST_GATEWAY_API_BIN") {
        Some(path) => std::path::PathBuf::from(path),
        None => workspace_binary("gateway-api"),
    }
}

/// A gateway-api binary as its own process on the test's database and queues, like another
/// replica of the app. Killed (SIGKILL) when dropped if it still runs, so a failing test
/// leaves no process behind; only this child is ever signalled.
pub struct GatewayProcess {
    child: std::process::Child,
    /// `http://127.0.0.1:<port>`
    pub address: String,
}

impl GatewayProcess {
    /// Starts one with the test's secrets, database and queue prefix, and waits until it
    /// answers `/readyz`. It loads the model catalog as it starts: spawn it after the test's
    /// models exist.
    pub async fn spawn(app: &TestApp) -> GatewayProcess {
        Self::spawn_with(app, &[]).await
    }

    /// [`Self::spawn`] with more environment variables (settings such as `APP__ABUSE__...`).
    pub async fn spawn_with(app: &TestApp, env: &[(&str, &str)]) -> GatewayProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = &app.settings;
        let child = std::process::Command::new(gateway_api_binary())
            .env("APP__SERVER__HOST", "127.0.0.1")
            .env("APP__SERVER__PORT", port.to_string())
            .env("APP__DATABASE__URL", &settings.database.url)
            .env("APP__BROKER__URL", &settings.broker.url)
            .env("APP__BROKER__QUEUE_PREFIX", &settings.broker.queue_prefix)
            .env(
                "APP__AUTH__JWT_SECRET",
                "test-jwt-secret-that-is-long-enough-0123456789",
            )
            .env("APP__AUTH__BCRYPT_COST", "4")
            .env("APP__SECURITY__MASTER_KEY", test_master_key())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .spawn()
            .unwrap();
        let mut gateway = GatewayProcess {
            child,
            address: format!("http://127.0.0.1:{port}"),
        };
        gateway.wait_ready(&app.client).await;
        gateway
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) {
        let url = format!("{}/readyz", self.address);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let ready = client.get(&url).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return;
            }
            if let Some(exited) = self.child.try_wait().unwrap() {
                panic!("gateway-api exited before it was ready: {exited}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gateway-api at {} not ready within 30 s",
                self.address
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reaps it: when this returns the process is gone.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for it to exit and answers how.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let exited = tokio::task::spawn_blocking(move || {
            let status = self.child.wait().unwrap();
            (self, status)
        })
        .await
        .unwrap();
        exited.1
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A session token with an admin role claim for user `sub`, signed with `secret` by `alg` and
/// expiring `exp_offset` seconds from now: for forged-token tests.
pub fn forge_token(
    secret: &str,
    alg: jsonwebtoken::Algorithm,
    sub: &str,
    exp_offset: i64,
) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": sub, "role": "admin", "iat": now, "exp": now + exp_offset, "iss": "ai-gateway"});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}
