//! The one API error: every failure on every route renders API.md's error body and status.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use persistence::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    InsufficientBalance(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    ModelNotFound(String),
    /// A known path under a method it does not take (405, with `Allow`: the methods it takes).
    #[error("{path} does not take this method; it takes {allow}")]
    MethodNotAllowed { path: String, allow: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    RateLimited(String),
    /// A rate, concurrency or spend limit, or a sign-in/sign-up throttle, refused the request
    /// (429, with `Retry-After` and the limit's headers).
    #[error("{}", .0.message)]
    Limited(Box<Limited>),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    UpstreamError(String),
    #[error("{0}")]
    UpstreamTimeout(String),
    /// The cause is logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A refusal by a limit: `rate_limited` (rates and concurrency) or `spend_limit_reached`.
#[derive(Debug)]
pub struct Limited {
    pub message: String,
    pub spend: bool,
    /// Seconds until a retry can pass (`Retry-After`), if known.
    pub retry_after: Option<u64>,
    /// OpenAI's `x-ratelimit-*` headers.
    pub headers: Vec<(String, String)>,
}

impl Limited {
    pub fn rate(message: String, retry_after: u64, headers: Vec<(String, String)>) -> Limited {
        Limited {
            message,
            spend: false,
            retry_after: Some(retry_after),
            headers,
        }
    }

    pub fn spend(message: String, retry_after: Option<u64>) -> Limited {
        Limited {
            message,
            spend: true,
            retry_after,
            headers: Vec::new(),
        }
    }
}

/// `{"error": {"message", "type", "code"}}`
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: &'static str,
}

impl ApiError {
    /// A 400 `invalid_request` saying what was wrong.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest(message.into())
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::InsufficientBalance(_) => "insufficient_balance",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Limited(limited) if limited.spend => "spend_limit_reached",
            ApiError::Limited(_) => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::UpstreamError(_) => "upstream_error",
            ApiError::UpstreamTimeout(_) => "upstream_timeout",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The OpenAI-style error family, so OpenAI clients classify our errors as they expect.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_)
            | ApiError::NotFound(_)
            | ApiError::MethodNotAllowed { .. }
            | ApiError::ModelNotFound(_)
            | ApiError::Conflict(_)
            | ApiError::PayloadTooLarge(_) => "invalid_request_error",
            ApiError::Unauthorized(_) => "authentication_error",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::InsufficientBalance(_) => "insufficient_quota",
            ApiError::Limited(limited) if limited.spend => "insufficient_quota",
            ApiError::RateLimited(_) | ApiError::Limited(_) => "rate_limit_error",
            ApiError::Unavailable(_)
            | ApiError::Internal(_)
            | ApiError::UpstreamError(_)
            | ApiError::UpstreamTimeout(_) => "api_error",
        }
    }

    fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal server error".to_owned(),
            other => other.to_string(),
        }
    }

    /// Anthropic's error family for the Messages route, so Anthropic clients classify our errors
    /// as they expect.
    fn anthropic_kind(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_)
            | ApiError::Conflict(_)
            | ApiError::MethodNotAllowed { .. } => "invalid_request_error",
            ApiError::Unauthorized(_) => "authentication_error",
            ApiError::InsufficientBalance(_) => "billing_error",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::NotFound(_) | ApiError::ModelNotFound(_) => "not_found_error",
            ApiError::PayloadTooLarge(_) => "request_too_large",
            ApiError::Limited(limited) if limited.spend => "billing_error",
            ApiError::RateLimited(_) | ApiError::Limited(_) => "rate_limit_error",
            ApiError::Unavailable(_) => "overloaded_error",
            ApiError::UpstreamTimeout(_) => "timeout_error",
            ApiError::Internal(_) | ApiError::UpstreamError(_) => "api_error",
        }
    }

    /// Anthropic's error body: `{"type": "error", "error": {"type", "message"}}`.
    pub fn anthropic_body(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "error",
            "error": {"type": self.anthropic_kind(), "message": self.public_message()},
        })
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.public_message(),
                kind: self.kind(),
                code: self.code(),
            },
        }
    }

    /// What a request that matched no route gets: 405 with `Allow` when its path is one of
    /// the API's under another method (the OpenAPI document lists them), else 404.
    pub fn unrouted(path: &str) -> ApiError {
        let allowed = crate::openapi::allowed_methods(path);
        if allowed.is_empty() {
            ApiError::NotFound("no such route".to_owned())
        } else {
            ApiError::MethodNotAllowed {
                path: path.to_owned(),
                allow: allowed.join(", "),
            }
        }
    }

    /// The error a bare status stands for, used to give non-JSON error responses our body.
    pub fn from_status(status: StatusCode) -> ApiError {
        let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
        match status.as_u16() {
            401 => ApiError::Unauthorized(reason),
            402 => ApiError::InsufficientBalance(reason),
            403 => ApiError::Forbidden(reason),
            404 | 405 => ApiError::NotFound("no such route".to_owned()),
            409 => ApiError::Conflict(reason),
            413 => ApiError::PayloadTooLarge("request body is too large".to_owned()),
            429 => ApiError::RateLimited(reason),
            502 => ApiError::UpstreamError(reason),
            503 => ApiError::Unavailable(reason),
            504 => ApiError::UpstreamTimeout(reason),
            400..=499 => ApiError::InvalidRequest(reason),
            _ => ApiError::Internal(reason),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::InsufficientBalance(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited(_) | ApiError::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UpstreamError(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            tracing::error!(%cause, "internal error");
        }
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            response.insert_header(("allow", allow.as_str()));
        }
        if let ApiError::Limited(limited) = self {
            let kind = if limited.spend { "spend" } else { "rate" };
            metrics::counter!("limits_refused_total", "kind" => kind).increment(1);
            if let Some(seconds) = limited.retry_after {
                response.insert_header(("retry-after", seconds.to_string()));
            }
            for (name, value) in &limited.headers {
                response.insert_header((name.as_str(), value.as_str()));
            }
        }
        response.json(self.body())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::NotFound("not found".to_owned()),
            StoreError::Unique(constraint) => ApiError::Conflict(unique_message(&constraint)),
            StoreError::ForeignKey(_) => ApiError::Conflict(
                "the record is still referenced by other records; disable it instead".to_owned(),
            ),
            StoreError::Check(constraint) => {
                ApiError::InvalidRequest(format!("value refused by rule {constraint}"))
            }
            StoreError::InvalidText => {
                ApiError::InvalidRequest("text fields must not contain NUL characters".to_owned())
            }
            StoreError::InsufficientBalance => {
                ApiError::Conflict("the balance cannot go below zero".to_owned())
            }
            StoreError::StateConflict(message) => ApiError::Conflict(message),
            StoreError::Pool(cause) => {
                tracing::error!(%cause, "database pool");
                ApiError::Unavailable("the database is unavailable, retry later".to_owned())
            }
            // Overload, not an outage: counted, not logged per request.
            StoreError::Busy => {
                metrics::counter!("db_pool_busy_total").increment(1);
                ApiError::Unavailable("every database connection is busy, retry shortly".to_owned())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn unique_message(constraint: &str) -> String {
    match constraint {
        "users_email_key" => "this email is already registered".to_owned(),
        "providers_name_key" => "a provider with this name already exists".to_owned(),
        "llm_models_name_key" => "a model with this name already exists".to_owned(),
        "payment_events_event_id_key" => "this payment event was already processed".to_owned(),
        "balance_ledger_kind_reference_key" => "this balance change was already applied".to_owned(),
        other => format!("duplicate value ({other})"),
    }
}

impl From<domain::MoneyError> for ApiError {
    fn from(error: domain::MoneyError) -> Self {
        ApiError::InvalidRequest(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_pool_answers_503_and_names_the_overload() {
        let error = ApiError::from(StoreError::Busy);
        assert_eq!(error.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(error.public_message().contains("busy"), "{error}");
        let down = ApiError::from(StoreError::Pool("refused".to_owned()));
        assert!(down.public_message().contains("unavailable"), "{down}");
    }
}
