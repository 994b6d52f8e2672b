//! Failure injection: the faults a key or a prompt asks for, and applying them.

use std::time::Duration;

use actix_web::http::StatusCode;

use crate::config::MockConfig;
use crate::error::MockError;

/// Waits the configured latency, then applies the key's fault (`fail-<status>`, `slow-<ms>`).
pub(crate) async fn before_answer(config: &MockConfig, key: &str) -> Result<(), MockError> {
    pause(config.latency_ms).await;
    if let Some(status) = key.strip_prefix("fail-").and_then(error_status) {
        return Err(MockError::Injected(status));
    }
    if let Some(ms) = key.strip_prefix("slow-").and_then(|ms| ms.parse().ok()) {
        pause(ms).await;
    }
    Ok(())
}

pub(crate) async fn pause(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Only error statuses can be injected: anything else would be an unexplained success.
fn error_status(code: &str) -> Option<StatusCode> {
    let code: u16 = code.parse().ok()?;
    if (400..=599).contains(&code) {
        StatusCode::from_u16(code).ok()
    } else {
        None
    }
}

/// The `[[...]]` directives found in a prompt; unknown or malformed ones are plain text.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    status: Option<StatusCode>,
    reject: bool,
    sleep_ms: u64,
    /// Stream events sent before the connection is cut.
    pub cut_after: Option<u32>,
    /// Answer length overriding the configured one.
    pub tokens: Option<u32>,
    /// Prompt tokens reported as read from a cache.
    pub cached: Option<u32>,
    /// Prompt tokens reported as written to the cache (Anthropic's route).
    pub written: Option<u32>,
    /// The answer reports no usage (embeddings), as some providers do.
    pub no_usage: bool,
}

impl Directives {
    pub(crate) fn scan(&mut self, text: &str) {
        let mut rest = text;
        while let Some(start) = rest.find("[[") {
            rest = &rest[start + 2..];
            let Some(end) = rest.find("]]") else { break };
            self.read(&rest[..end]);
            rest = &rest[end + 2..];
        }
    }

    fn read(&mut self, directive: &str) {
        match directive.split_once(':') {
            Some(("status", code)) => self.status = error_status(code).or(self.status),
            Some(("sleep", ms)) => self.sleep_ms = ms.parse().unwrap_or(self.sleep_ms),
            Some(("cut", n)) => self.cut_after = n.parse().ok().or(self.cut_after),
            Some(("tokens", n)) => self.tokens = n.parse().ok().or(self.tokens),
            Some(("cached", n)) => self.cached = n.parse().ok().or(self.cached),
            Some(("written", n)) => self.written = n.parse().ok().or(self.written),
            None if directive == "reject" => self.reject = true,
            None if directive == "no-usage" => self.no_usage = true,
            _ => {}
        }
    }

    /// Sleeps if asked, then fails if asked.
    pub(crate) async fn apply(&self) -> Result<(), MockError> {
        pause(self.sleep_ms).await;
        if let Some(status) = self.status {
            return Err(MockError::Injected(status));
        }
        if self.reject {
            return Err(MockError::ContentPolicy);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Directives {
        let mut directives = Directives::default();
        directives.scan(text);
        directives
    }

    #[test]
    fn every_directive_is_read() {
        let found = scan(
            "hi [[status:503]] [[reject]][[sleep:1500]] [[cut:5]] x[[tokens:100]]y[[cached:12]] [[no-usage]] [[written:3]]",
        );
        assert_eq!(
            found,
            Directives {
                status: Some(StatusCode::SERVICE_UNAVAILABLE),
                reject: true,
                sleep_ms: 1500,
                cut_after: Some(5),
                tokens: Some(100),
                cached: Some(12),
                written: Some(3),
                no_usage: true,
            }
        );
    }

    #[test]
    fn plain_and_malformed_text_asks_for_nothing() {
        for text in [
            "hello world",
            "[[status:200]] [[status:abc]] [[tokens:-1]] [[rejected]] [[cached:x]]",
            "[[cut:5",
            "]] [[",
            "[[]]",
        ] {
            assert_eq!(scan(text), Directives::default(), "{text}");
        }
    }

    #[tokio::test]
    async fn key_faults_pick_the_status() {
        let config = MockConfig::default();
        let failure = before_answer(&config, "fail-429").await.unwrap_err();
        assert!(matches!(
            failure,
            MockError::Injected(StatusCode::TOO_MANY_REQUESTS)
        ));
        assert!(before_answer(&config, "fail-200").await.is_ok());
        assert!(before_answer(&config, "sk-anything").await.is_ok());
    }
}
