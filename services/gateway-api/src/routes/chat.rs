//! The model-call endpoints: `/v1/chat/completions` (and the seed's alias `/v1/chat`),
//! `/v1/responses` and `/v1/embeddings`, OpenAI's; each runs on the one call path.
//!
//! Each handler boxes its call's future: the call path's state machine is large, and actix
//! moves a handler's future by value before it first polls it; a box moves as one pointer.

use actix_web::{HttpResponse, web};
use serde_json::Value;

use crate::auth::KeyHolder;
use crate::core::{chat, embeddings, responses};
use crate::error::{ApiError, ErrorBody};
use crate::state::{AppState, CallPath};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/chat/completions", web::post().to(completions))
        .route("/v1/chat", web::post().to(completions))
        .route("/v1/responses", web::post().to(respond))
        .route("/v1/embeddings", web::post().to(embed));
}

/// OpenAI's chat completion: the body is OpenAI's, `model` is the public name; with
/// `"stream": true` the answer is OpenAI's SSE stream. The maximum cost is held before the call
/// and the real usage billed after it.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "models", security(("access_key" = [])),
    request_body(content = Object, description = "OpenAI chat completion request"),
    responses((status = 200, description = "OpenAI chat completion, or its SSE stream"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 402, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
        (status = 504, body = ErrorBody)))]
pub async fn completions(
    state: web::Data<AppState>,
    call_path: web::Data<CallPath>,
    holder: KeyHolder,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    Box::pin(chat::complete(
        state.into_inner(),
        call_path.into_inner(),
        holder,
        body.into_inner(),
    ))
    .await
}

/// OpenAI's embeddings: `input` a string, strings, a token array or token arrays; the model
/// must be of kind `embedding`. The hold is sized from the input; the provider's usage (or the
/// input counted offline) is billed at `input_per_million`.
#[utoipa::path(post, path = "/v1/embeddings", tag = "models", security(("access_key" = [])),
    request_body(content = Object, description = "OpenAI embeddings request"),
    responses((status = 200, description = "OpenAI embeddings list with usage"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 402, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
        (status = 504, body = ErrorBody)))]
pub async fn embed(
    state: web::Data<AppState>,
    call_path: web::Data<CallPath>,
    holder: KeyHolder,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    Box::pin(embeddings::embed(
        state.into_inner(),
        call_path.into_inner(),
        holder,
        body.into_inner(),
    ))
    .await
}

/// OpenAI's Responses API, stateless, served by any chat model: `input` (a string or items),
/// `instructions`, function tools and calls, `max_output_tokens`; with `"stream": true` its
/// event stream (`response.created` ... `response.completed` with the usage). Refused with 400:
/// `previous_response_id`, `conversation`, background runs and built-in tools.
#[utoipa::path(post, path = "/v1/responses", tag = "models", security(("access_key" = [])),
    request_body(content = Object, description = "OpenAI Responses request"),
    responses((status = 200, description = "OpenAI Response object, or its event stream"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 402, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
        (status = 504, body = ErrorBody)))]
pub async fn respond(
    state: web::Data<AppState>,
    call_path: web::Data<CallPath>,
    holder: KeyHolder,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    Box::pin(responses::respond(
        state.into_inner(),
        call_path.into_inner(),
        holder,
        body.into_inner(),
    ))
    .await
}
