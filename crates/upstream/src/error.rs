//! The one error type of upstream calls, classified by what the gateway must do about it.

use std::error::Error as _;

/// Why a call to a provider failed.
///
/// Key failures (`Unauthorized`, `RateLimited`, `Server`, `Timeout`, `Connect`) cool the key down
/// and fail over to the next one; the others are returned to the caller at once.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// 401/403 (the key is wrong or revoked) or 402 (the provider account behind the key is out of credit).
    #[error("upstream refused the provider key (HTTP {status})")]
    Unauthorized { status: u16 },
    /// 429.
    #[error("upstream rate limited the provider key (HTTP 429)")]
    RateLimited,
    /// 5xx.
    #[error("upstream server error (HTTP {status})")]
    Server { status: u16 },
    /// No connection, no headers or no next chunk within the configured time.
    #[error("upstream timed out")]
    Timeout,
    /// The connection could not be opened, or broke.
    #[error("upstream connection failed: {0}")]
    Connect(String),
    /// Any other 4xx: the request itself is wrong. Not retried; `body` (at most 64 KiB) is the upstream's explanation.
    #[error("upstream rejected the request (HTTP {status})")]
    BadRequest { status: u16, body: String },
    /// The upstream answered something that is not the protocol (invalid JSON, unexpected status).
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// The provider has no key that may be used now (none configured, all weight 0, or all cooling down).
    #[error("no provider key available")]
    NoKeyAvailable,
    /// The HTTP client could not be built from the settings.
    #[error("invalid upstream configuration: {0}")]
    Config(String),
}

impl UpstreamError {
    /// Classifies a non-2xx status; `body` is the (truncated) response body.
    pub fn from_status(status: u16, body: String) -> Self {
        match status {
            401..=403 => Self::Unauthorized { status },
            429 => Self::RateLimited,
            500..=599 => Self::Server { status },
            400..=499 => Self::BadRequest { status, body },
            other => Self::Protocol(format!("unexpected HTTP status {other}")),
        }
    }

    /// Classifies a transport error of reqwest, keeping its cause chain in the message but not
    /// the provider's URL: these messages reach clients ("the provider failed: ..."), and a
    /// provider's address (host, path, a key in a query string) is the operator's business.
    pub fn from_reqwest(error: reqwest::Error) -> Self {
        let error = error.without_url();
        if error.is_timeout() {
            return Self::Timeout;
        }
        if error.is_builder() {
            return Self::Config(error.to_string());
        }
        if error.is_decode() {
            return Self::Protocol(error_chain(&error));
        }
        // Connect errors and connections broken mid-exchange alike: the provider is unreachable for now.
        Self::Connect(error_chain(&error))
    }

    /// True when the key should cool down and the call move on to another key.
    pub fn is_key_failure(&self) -> bool {
        matches!(
            self,
            Self::Unauthorized { .. }
                | Self::RateLimited
                | Self::Server { .. }
                | Self::Timeout
                | Self::Connect(_)
        )
    }

    /// The status the gateway answers once failover gave up with this error.
    ///
    /// A `BadRequest` keeps the upstream's status (it is the client's fault).
    /// The provider as a whole failed (every key tried failed, none was available, or it
    /// answered nonsense): another provider of the same model may still serve the call.
    pub fn is_provider_failure(&self) -> bool {
        self.is_key_failure() || matches!(self, Self::NoKeyAvailable | Self::Protocol(_))
    }

    pub fn http_status_for_client(&self) -> u16 {
        match self {
            Self::BadRequest { status, .. } => *status,
            Self::Timeout => 504,
            Self::RateLimited | Self::NoKeyAvailable => 503,
            Self::Unauthorized { .. }
            | Self::Server { .. }
            | Self::Connect(_)
            | Self::Protocol(_) => 502,
            Self::Config(_) => 500,
        }
    }

    /// The API error code matching [`Self::http_status_for_client`].
    pub fn client_error_code(&self) -> &'static str {
        match self.http_status_for_client() {
            404 => "not_found",
            409 => "conflict",
            413 => "payload_too_large",
            400..=499 => "invalid_request",
            503 => "unavailable",
            504 => "upstream_timeout",
            500 => "internal",
            _ => "upstream_error",
        }
    }

    /// The provider's HTTP status, when it answered with an error status.
    pub fn provider_status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized { status }
            | Self::Server { status }
            | Self::BadRequest { status, .. } => Some(*status),
            Self::RateLimited => Some(429),
            _ => None,
        }
    }

    /// Short label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "unauthorized",
            Self::RateLimited => "rate_limited",
            Self::Server { .. } => "server_error",
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect_error",
            Self::BadRequest { .. } => "bad_request",
            Self::Protocol(_) => "protocol_error",
            Self::NoKeyAvailable => "no_key",
            Self::Config(_) => "config_error",
        }
    }
}

fn error_chain(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert!(matches!(
            UpstreamError::from_status(401, String::new()),
            UpstreamError::Unauthorized { status: 401 }
        ));
        assert!(matches!(
            UpstreamError::from_status(403, String::new()),
            UpstreamError::Unauthorized { status: 403 }
        ));
        assert!(matches!(
            UpstreamError::from_status(402, String::new()),
            UpstreamError::Unauthorized { status: 402 }
        ));
        assert!(matches!(
            UpstreamError::from_status(429, String::new()),
            UpstreamError::RateLimited
        ));
        assert!(matches!(
            UpstreamError::from_status(503, String::new()),
            UpstreamError::Server { status: 503 }
        ));
        assert!(matches!(
            UpstreamError::from_status(422, "bad".into()),
            UpstreamError::BadRequest { status: 422, ref body } if body == "bad"
        ));
        assert!(matches!(
            UpstreamError::from_status(302, String::new()),
            UpstreamError::Protocol(_)
        ));
    }

    #[test]
    fn key_failures_and_client_statuses() {
        let bad = UpstreamError::BadRequest {
            status: 400,
            body: String::new(),
        };
        assert!(!bad.is_key_failure());
        assert_eq!(
            (bad.http_status_for_client(), bad.client_error_code()),
            (400, "invalid_request")
        );
        assert!(!UpstreamError::Protocol("x".into()).is_key_failure());
        assert!(UpstreamError::RateLimited.is_key_failure());
        assert!(UpstreamError::Timeout.is_key_failure());
        assert_eq!(
            UpstreamError::Timeout.client_error_code(),
            "upstream_timeout"
        );
        assert_eq!(UpstreamError::NoKeyAvailable.http_status_for_client(), 503);
        assert_eq!(
            UpstreamError::RateLimited.client_error_code(),
            "unavailable"
        );
        assert_eq!(
            UpstreamError::Server { status: 500 }.http_status_for_client(),
            502
        );
        assert_eq!(
            UpstreamError::Connect("refused".into()).client_error_code(),
            "upstream_error"
        );
    }
}
