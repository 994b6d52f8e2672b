//! gateway-api configuration: built-in defaults, then `APP_CONFIG_FILE`, then `APP__*` variables.

use base64::Engine;
use domain::Money;
use persistence::DatabaseSettings;
use runtime::telemetry::LogFormat;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

const DEFAULTS: &str = r#"
log_format = "pretty"
run_migrations = true
runtime_threads = 1

[server]
host = "127.0.0.1"
port = 8080
body_limit_bytes = 1048576
shutdown_grace_seconds = 20

[database]
url = "postgres://postgres@127.0.0.1:5432/ai_gateway"
pool_max_size = 16
pool_wait_timeout_ms = 5000
connect_timeout_ms = 5000

[auth]
jwt_ttl_seconds = 86400
bcrypt_cost = 12

[abuse]
failures_per_account = 5
failures_per_address = 20
backoff_base_ms = 1000
backoff_max_ms = 300000
forget_after_seconds = 900
registrations_per_address = 10
registration_backoff_base_ms = 60000
hashes_in_flight = 4
hash_wait_ms = 1000
unknown_key_cache_ttl_ms = 5000
trusted_proxies = ""

[orders]
max_amount = "100000"
payment_tolerance_seconds = 300

[broker]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
queue_prefix = ""
prefetch = 16
publish_confirm_timeout_ms = 5000

[calls]
hold_ttl_seconds = 900
catalog_refresh_ms = 2000
allow_private_callbacks = false
billing_batch_max = 256
billing_publishes_in_flight = 1
outbox_first_below = 1500
outbox_forward_linger_ms = 20
stream_stall_ms = 30000
lease_max_percent = 25
lease_min_calls = 32
lease_horizon_ms = 2000
lease_idle_ms = 5000
holds_in_flight = 1
key_cache_ttl_ms = 1000
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub log_format: LogFormat,
    /// gateway-api applies pending migrations on start (workers never do).
    pub run_migrations: bool,
    /// Threads of the runtime beside the HTTP workers (`server.workers`): it runs the shared
    /// tasks (charge publishing and its confirms, lease renewal, catalog and key reloads,
    /// statistics). 1 by default: their work per call is smaller than waking a second thread
    /// for it (alternating runs at saturation on 2 cores: median 8% more calls/s than 2). A
    /// multi-thread runtime even with one worker: the migrations block in place.
    pub runtime_threads: usize,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub security: SecuritySettings,
    pub abuse: AbuseSettings,
    pub orders: OrderSettings,
    #[serde(default)]
    pub bootstrap: BootstrapSettings,
    pub broker: messaging::BrokerSettings,
    /// Timeouts, connection pooling, failover and key cooldown towards the providers.
    #[serde(default)]
    pub upstream: upstream::UpstreamSettings,
    pub calls: CallSettings,
    /// The admin overview's statistics (see `core::statistics`).
    #[serde(default)]
    pub stats: StatsSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct StatsSettings {
    /// Each replica adds the calls it counted in memory to `call_stats` this often (one
    /// statement per flush); a replica killed without a stop loses at most this much of its
    /// statistics (never money).
    pub flush_ms: u64,
    /// Queue depths are sampled into `queue_samples` about this often, by one replica at a time.
    pub sample_ms: u64,
    /// Statistics older than this are deleted.
    pub retention_days: u32,
}

impl Default for StatsSettings {
    fn default() -> Self {
        StatsSettings {
            flush_ms: 10_000,
            sample_ms: 60_000,
            retention_days: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CallSettings {
    /// A hold whose call never finished (gateway crash) is released after this; it must be
    /// longer than the longest call.
    pub hold_ttl_seconds: i64,
    /// How often the model catalog and provider keys are reloaded from Postgres (admin changes
    /// made through another replica take effect within this).
    pub catalog_refresh_ms: u64,
    /// Job webhooks to loopback or private addresses are refused unless set (SSRF).
    pub allow_private_callbacks: bool,
    /// A hosts file whose entries win over DNS when a `callback_url` host is checked (read at
    /// every lookup); unset in production. Tests rebind names with it.
    #[serde(default)]
    pub callback_hosts_file: Option<std::path::PathBuf>,
    /// At most this many charges in one message to `billing_log_queue`.
    pub billing_batch_max: usize,
    /// Batches being published (awaiting the broker's confirm) at once; charges that finish
    /// meanwhile wait and go together in the next batch.
    pub billing_publishes_in_flight: usize,
    /// Below this many calls per second (in this process), a call's charge is made durable
    /// by an insert into the Postgres outbox (one commit, faster than a quorum queue's confirm
    /// when nothing is there to share it) and forwarded to the broker afterwards; above it, by
    /// broker group commit (no Postgres statement per call). 0 = always the broker.
    pub outbox_first_below: u32,
    /// How long a charge kept in the outbox first waits for others to share its message to
    /// the broker. No answer waits for it: it only delays settlement (the call's reservation
    /// covers the charge meanwhile, and a crash leaves it to billing-worker's outbox sweep).
    pub outbox_forward_linger_ms: u64,
    /// A streaming client that has not taken the next chunk for this long (the buffer of
    /// chunks read ahead from the provider being full) is cut off; the provider's stream is
    /// still read to its end and billed.
    pub stream_stall_ms: u64,
    /// Credit leases (see `core::admission`): a lease takes at most this share of a user's
    /// free balance, in percent; 0 turns leases off (every call then places a hold).
    pub lease_max_percent: u32,
    /// A lease is granted only if it covers at least this many calls like the one asking, so a
    /// small balance is never split between processes: such users' calls place holds.
    pub lease_min_calls: u32,
    /// Demand is measured over windows of this length; a lease covers about two of them.
    pub lease_horizon_ms: u64,
    /// A lease unused this long is given back (its money is free for other processes again).
    pub lease_idle_ms: u64,
    /// How long a checked access key is trusted without asking Postgres again: a key revoked
    /// (or a user disabled) through another replica, or in the database directly, stops
    /// working within this. The replica that handles the revocation forgets the key at once.
    /// 0 = look every key up on every call.
    pub key_cache_ttl_ms: u64,
    /// Hold statements each server worker thread runs at once. The calls that arrive while
    /// they run are admitted together by the next one (one statement for many calls), so a low
    /// number means fewer, larger statements: less Postgres work per call under load, and a
    /// lone call still goes at once.
    pub holds_in_flight: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// Larger request bodies answer 413.
    pub body_limit_bytes: usize,
    #[serde(default)]
    pub workers: Option<usize>,
    /// When set, /healthz, /readyz and /metrics are also served on this port of `host`
    /// without credentials (for Prometheus; keep it off the ingress). On the API port,
    /// /metrics needs an admin token.
    #[serde(default)]
    pub ops_port: Option<u16>,
    /// After SIGTERM, in-flight requests get this long to finish.
    pub shutdown_grace_seconds: u64,
}

/// Defences against hostile clients (see `core::throttle` and docs/SECURITY.md).
#[derive(Debug, Clone, Deserialize)]
pub struct AbuseSettings {
    /// Failed logins to one account allowed before backoff starts.
    pub failures_per_account: u32,
    /// Failed logins from one client address (IPv6: its /64) allowed before backoff starts.
    pub failures_per_address: u32,
    /// The first block after the free failures; each further failure doubles it.
    pub backoff_base_ms: u64,
    /// The longest block.
    pub backoff_max_ms: u64,
    /// An account or address with no attempt for this long starts over.
    pub forget_after_seconds: u64,
    /// Registrations from one address allowed before backoff starts.
    pub registrations_per_address: u32,
    /// The first block on registrations from an address past the allowed number.
    pub registration_backoff_base_ms: u64,
    /// Password hashes (bcrypt) computed at once, across login, registration and password
    /// changes; a request that cannot start one within `hash_wait_ms` answers 429.
    pub hashes_in_flight: usize,
    pub hash_wait_ms: u64,
    /// An access key that matched nothing is refused without a lookup for this long (random
    /// `sk-...` strings cannot drain the database pool). 0 = no negative cache.
    pub unknown_key_cache_ttl_ms: u64,
    /// CIDRs (comma separated) of the proxies in front of the gateway: only a peer in this
    /// list has its `X-Forwarded-For` read; empty = the TCP peer is the client.
    pub trusted_proxies: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// HS256 secret for session tokens; at least 32 bytes.
    pub jwt_secret: SecretString,
    pub jwt_ttl_seconds: i64,
    pub bcrypt_cost: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SecuritySettings {
    /// Base64 of 32 random bytes: the AES-256-GCM key for provider secrets at rest.
    pub master_key: SecretString,
    /// `Strict-Transport-Security: max-age=...` on every response; 0 (the default) sends none
    /// (set it when clients reach the gateway over HTTPS only).
    #[serde(default)]
    pub hsts_max_age_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderSettings {
    pub max_amount: Money,
    /// HMAC-SHA256 secret shared with the payment provider; callbacks are refused without it.
    #[serde(default)]
    pub payment_webhook_secret: Option<SecretString>,
    pub payment_tolerance_seconds: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BootstrapSettings {
    pub admin_email: Option<String>,
    pub admin_password: Option<SecretString>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads the layers, then the bootstrap admin from `ADMIN_EMAIL` / `ADMIN_PASSWORD`.
    pub fn load() -> Result<Settings, SettingsError> {
        let mut settings: Settings =
            runtime::config::load(DEFAULTS).map_err(|e| SettingsError::Load(e.to_string()))?;
        if let Ok(email) = std::env::var("ADMIN_EMAIL") {
            settings.bootstrap.admin_email = Some(email);
        }
        if let Ok(password) = std::env::var("ADMIN_PASSWORD") {
            settings.bootstrap.admin_password = Some(password.into());
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Refuses to start with settings that would make the service unsafe or broken.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |m: &str| Err(SettingsError::Invalid(m.to_owned()));
        if !runtime::threads::RANGE.contains(&self.runtime_threads) {
            return invalid("runtime_threads must be between 1 and 64");
        }
        if self.auth.jwt_secret.expose_secret().len() < 32 {
            return invalid("auth.jwt_secret must be at least 32 bytes (APP__AUTH__JWT_SECRET)");
        }
        if !(4..=31).contains(&self.auth.bcrypt_cost) {
            return invalid("auth.bcrypt_cost must be between 4 and 31");
        }
        if let Err(message) =
            crate::core::throttle::parse_trusted_proxies(&self.abuse.trusted_proxies)
        {
            return invalid(&format!("abuse.trusted_proxies: {message}"));
        }
        if self.abuse.hashes_in_flight == 0 {
            return invalid("abuse.hashes_in_flight must be at least 1");
        }
        if self.auth.jwt_ttl_seconds <= 0 {
            return invalid("auth.jwt_ttl_seconds must be positive");
        }
        if self.master_key().is_none() {
            return invalid(
                "security.master_key must be base64 of 32 bytes (APP__SECURITY__MASTER_KEY)",
            );
        }
        if self.stats.flush_ms == 0 || self.stats.sample_ms == 0 || self.stats.retention_days == 0 {
            return invalid(
                "stats.flush_ms, stats.sample_ms and stats.retention_days must be positive",
            );
        }
        if !self.orders.max_amount.is_positive() {
            return invalid("orders.max_amount must be positive");
        }
        self.upstream
            .validate()
            .map_err(|e| SettingsError::Invalid(format!("upstream: {e}")))?;
        // A call (failover and streaming included) ends by upstream.total_timeout_ms, and its
        // charge is durable within the publish-confirm timeout (or an outbox write) after
        // that: its hold outlives it.
        if self.calls.hold_ttl_seconds.saturating_mul(1000) <= self.longest_call_ms() {
            return invalid(
                "calls.hold_ttl_seconds must exceed upstream.total_timeout_ms plus \
                 broker.publish_confirm_timeout_ms plus database.pool_wait_timeout_ms",
            );
        }
        if self.calls.catalog_refresh_ms < 100 {
            return invalid("calls.catalog_refresh_ms must be at least 100");
        }
        if !(1..=10_000).contains(&self.calls.billing_batch_max) {
            return invalid("calls.billing_batch_max must be between 1 and 10000");
        }
        if !(1..=1024).contains(&self.calls.billing_publishes_in_flight) {
            return invalid("calls.billing_publishes_in_flight must be between 1 and 1024");
        }
        if self.calls.lease_max_percent > 50 {
            return invalid("calls.lease_max_percent must be at most 50");
        }
        if !(1..=100_000).contains(&self.calls.lease_min_calls) {
            return invalid("calls.lease_min_calls must be between 1 and 100000");
        }
        if !(100..=60_000).contains(&self.calls.lease_horizon_ms) {
            return invalid("calls.lease_horizon_ms must be between 100 and 60000");
        }
        if !(1_000..=600_000).contains(&self.calls.lease_idle_ms) {
            return invalid("calls.lease_idle_ms must be between 1000 and 600000");
        }
        if !(100..=600_000).contains(&self.calls.stream_stall_ms) {
            return invalid("calls.stream_stall_ms must be between 100 and 600000");
        }
        if !(1..=64).contains(&self.calls.holds_in_flight) {
            return invalid("calls.holds_in_flight must be between 1 and 64");
        }
        if self.calls.key_cache_ttl_ms > 60_000 {
            return invalid("calls.key_cache_ttl_ms must be at most 60000");
        }
        if self.server.body_limit_bytes < 1024 {
            return invalid("server.body_limit_bytes must be at least 1024");
        }
        if let Some(secret) = &self.orders.payment_webhook_secret
            && secret.expose_secret().len() < 16
        {
            return invalid("orders.payment_webhook_secret must be at least 16 bytes");
        }
        Ok(())
    }

    /// The longest a model call can take from its admission until its charge is durable.
    pub fn longest_call_ms(&self) -> i64 {
        (self.upstream.total_timeout_ms as i64)
            .saturating_add(self.broker.publish_confirm_timeout_ms as i64)
            .saturating_add(self.database.pool_wait_timeout_ms as i64)
    }

    pub fn master_key(&self) -> Option<[u8; 32]> {
        base64::engine::general_purpose::STANDARD
            .decode(self.security.master_key.expose_secret().trim())
            .ok()?
            .try_into()
            .ok()
    }
}
