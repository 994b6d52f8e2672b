//! How to reach RabbitMQ and how hard to lean on it.

use std::fmt;

use serde::Deserialize;

#[derive(Clone, Deserialize)]
pub struct BrokerSettings {
    /// e.g. `amqp://guest:guest@127.0.0.1:5672/%2f` (the vhost is percent-decoded).
    pub url: String,
    /// Prepended to every queue and exchange name: "" in production, a unique value per test
    /// so parallel tests never share queues.
    #[serde(default)]
    pub queue_prefix: String,
    /// Unacknowledged deliveries per consumer, hence also the handler concurrency.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// How long a publish waits for the broker's confirm before it counts as failed.
    #[serde(default = "default_publish_confirm_timeout_ms")]
    pub publish_confirm_timeout_ms: u64,
}

fn default_prefetch() -> u16 {
    16
}

fn default_publish_confirm_timeout_ms() -> u64 {
    5_000
}

impl BrokerSettings {
    /// Settings for `url` with the defaults for everything else.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            queue_prefix: String::new(),
            prefetch: default_prefetch(),
            publish_confirm_timeout_ms: default_publish_confirm_timeout_ms(),
        }
    }

    /// The URL with its password masked, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

impl fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("url", &self.redacted_url())
            .field("queue_prefix", &self.queue_prefix)
            .field("prefetch", &self.prefetch)
            .field(
                "publish_confirm_timeout_ms",
                &self.publish_confirm_timeout_ms,
            )
            .finish()
    }
}

/// `amqp://user:secret@host/` becomes `amqp://user:***@host/`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let settings = BrokerSettings::new("amqp://guest:s3cret@rabbit:5672/%2f");
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("amqp://guest:***@rabbit:5672/%2f"),
            "{shown}"
        );
        assert_eq!(redact("amqp://rabbit/"), "amqp://rabbit/");
    }

    #[test]
    fn optional_fields_have_defaults() {
        let settings: BrokerSettings =
            serde_json::from_str(r#"{"url":"amqp://localhost"}"#).expect("settings");
        assert_eq!(settings.queue_prefix, "");
        assert_eq!(settings.prefetch, 16);
        assert_eq!(settings.publish_confirm_timeout_ms, 5_000);
    }
}
