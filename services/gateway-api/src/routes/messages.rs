//! `/v1/messages`: Anthropic's Messages API, for Anthropic's clients (the key also in
//! `x-api-key`); every error on this route in Anthropic's error shape.

use actix_web::middleware::from_fn;
use actix_web::{HttpResponse, web};
use serde_json::Value;

use crate::auth::KeyHolder;
use crate::core::messages;
use crate::error::ApiError;
use crate::middleware::anthropic_errors;
use crate::state::{AppState, CallPath};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/messages")
            .wrap(from_fn(anthropic_errors))
            .route(web::post().to(create)),
    );
}

/// Anthropic's Messages API, served by any chat model: the body is Anthropic's (`model` is the
/// public name, `max_tokens` required); with `"stream": true` Anthropic's event stream
/// (`message_start`, `content_block_*`, `message_delta` with the usage, `message_stop`, the last
/// two once the charge is durable). Errors are `{"type": "error", "error": {"type", "message"}}`.
#[utoipa::path(post, path = "/v1/messages", tag = "models", security(("access_key" = [])),
    request_body(content = Object, description = "Anthropic Messages request"),
    responses((status = 200, description = "Anthropic Message, or its event stream"),
        (status = 400, description = "invalid_request_error (Anthropic's error shape)"),
        (status = 401, description = "authentication_error"),
        (status = 402, description = "billing_error"),
        (status = 404, description = "not_found_error"),
        (status = 502, description = "api_error"),
        (status = 503, description = "overloaded_error"),
        (status = 504, description = "timeout_error")))]
pub async fn create(
    state: web::Data<AppState>,
    call_path: web::Data<CallPath>,
    holder: KeyHolder,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    Box::pin(messages::create(
        state.into_inner(),
        call_path.into_inner(),
        holder,
        body.into_inner(),
    ))
    .await
}
