//! Every non-2xx answer, rendered in OpenAI's error shape, or Anthropic's on `/v1/messages`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub(crate) enum MockError {
    #[error(
        "You didn't provide an API key. You need to provide your API key in an Authorization \
         header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )]
    MissingKey,
    #[error("{0}")]
    InvalidRequest(String),
    #[error(
        "Your request was rejected as a result of our safety system. (mock-llm [[reject]] fault)"
    )]
    ContentPolicy,
    /// A status asked for by the key (`fail-503`) or the prompt (`[[status:503]]`).
    #[error("mock-llm injected fault: {0}")]
    Injected(StatusCode),
}

impl MockError {
    /// OpenAI's `type` and `code` for this error.
    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::MissingKey => ("invalid_request_error", Some("invalid_api_key")),
            Self::InvalidRequest(_) => ("invalid_request_error", None),
            Self::ContentPolicy => ("invalid_request_error", Some("content_policy_violation")),
            Self::Injected(status) => match status.as_u16() {
                401 => ("invalid_request_error", Some("invalid_api_key")),
                403 => (
                    "permission_error",
                    Some("unsupported_country_region_territory"),
                ),
                404 => ("invalid_request_error", Some("model_not_found")),
                429 => ("requests", Some("rate_limit_exceeded")),
                500..=599 => ("server_error", None),
                _ => ("invalid_request_error", None),
            },
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: (),
    code: Option<&'static str>,
}

impl ResponseError for MockError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::MissingKey => StatusCode::UNAUTHORIZED,
            Self::InvalidRequest(_) | Self::ContentPolicy => StatusCode::BAD_REQUEST,
            Self::Injected(status) => *status,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let (kind, code) = self.kind();
        let mut response = HttpResponse::build(status);
        if status == StatusCode::TOO_MANY_REQUESTS {
            response.insert_header(("retry-after", "1"));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                message: &self.to_string(),
                kind,
                param: (),
                code,
            },
        })
    }
}

/// A [`MockError`] on the Anthropic route: `{"type":"error","error":{"type":..,"message":..}}`.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct AnthropicError(#[from] pub MockError);

impl AnthropicError {
    /// Anthropic's error `type` for a status.
    fn kind(status: StatusCode) -> &'static str {
        match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        }
    }
}

#[derive(Serialize)]
struct AnthropicErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicErrorDetail<'a>,
}

#[derive(Serialize)]
struct AnthropicErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

impl ResponseError for AnthropicError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let kind = Self::kind(status);
        let message = match &self.0 {
            MockError::MissingKey => "x-api-key header is required".to_owned(),
            // 529 has no canonical reason phrase: name the error type instead.
            MockError::Injected(status) => {
                format!("mock-llm injected fault: {} {kind}", status.as_u16())
            }
            other => other.to_string(),
        };
        let mut response = HttpResponse::build(status);
        if status == StatusCode::TOO_MANY_REQUESTS {
            response.insert_header(("retry-after", "1"));
        }
        response.json(AnthropicErrorBody {
            kind: "error",
            error: AnthropicErrorDetail {
                kind,
                message: &message,
            },
        })
    }
}
