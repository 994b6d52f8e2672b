//! Every non-2xx answer, rendered in OpenAI's error shape.

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
