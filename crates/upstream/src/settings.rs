//! Settings of the shared upstream HTTP client and of provider-key failover.

use std::time::Duration;

use serde::Deserialize;

/// Timeouts, pooling and failover knobs; every field has a default, so a config file may set only some.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Time allowed to open a TCP (and TLS) connection to a provider.
    pub connect_timeout_ms: u64,
    /// Streaming calls: time allowed for the response headers, and for each following chunk (idle timeout).
    pub first_byte_timeout_ms: u64,
    /// Non-streaming calls (chat, images): time allowed for the whole exchange, headers and body.
    pub total_timeout_ms: u64,
    /// Idle keep-alive connections kept per provider host.
    pub pool_idle_per_host: usize,
    /// Keys tried for one call before giving up.
    pub max_failover_attempts: u32,
    /// Cooldown after a key's first consecutive failure; doubles with each further one.
    pub cooldown_base_ms: u64,
    /// Upper bound of a key's cooldown.
    pub cooldown_max_ms: u64,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 60_000,
            total_timeout_ms: 300_000,
            pool_idle_per_host: 64,
            max_failover_attempts: 3,
            cooldown_base_ms: 1_000,
            cooldown_max_ms: 300_000,
        }
    }
}

impl UpstreamSettings {
    /// Refuses settings that would make every call fail or never time out.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_byte_timeout_ms", self.first_byte_timeout_ms),
            ("total_timeout_ms", self.total_timeout_ms),
            (
                "max_failover_attempts",
                u64::from(self.max_failover_attempts),
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("upstream.{name} must be greater than 0"));
        }
        if self.cooldown_base_ms > self.cooldown_max_ms {
            return Err(
                "upstream.cooldown_base_ms must not exceed upstream.cooldown_max_ms".to_owned(),
            );
        }
        Ok(())
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_millis(self.first_byte_timeout_ms)
    }

    pub fn total_timeout(&self) -> Duration {
        Duration::from_millis(self.total_timeout_ms)
    }

    pub fn cooldown_base(&self) -> Duration {
        Duration::from_millis(self.cooldown_base_ms)
    }

    pub fn cooldown_max(&self) -> Duration {
        Duration::from_millis(self.cooldown_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_partial_config_fills_in() {
        assert_eq!(UpstreamSettings::default().validate(), Ok(()));
        let settings: UpstreamSettings =
            serde_json::from_str(r#"{"connect_timeout_ms": 250}"#).expect("parses");
        assert_eq!(settings.connect_timeout_ms, 250);
        assert_eq!(
            settings.total_timeout_ms,
            UpstreamSettings::default().total_timeout_ms
        );
    }

    #[test]
    fn zero_timeouts_and_inverted_cooldowns_are_refused() {
        let zero = UpstreamSettings {
            first_byte_timeout_ms: 0,
            ..UpstreamSettings::default()
        };
        assert!(zero.validate().is_err());
        let inverted = UpstreamSettings {
            cooldown_base_ms: 10,
            cooldown_max_ms: 1,
            ..UpstreamSettings::default()
        };
        assert!(inverted.validate().is_err());
    }
}
