//! Cross-cutting HTTP behaviour: request ids, request metrics, and the API error body on every
//! error response, including those actix produces itself.

use std::time::Instant;

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, FromRequest, HttpMessage, HttpResponse};

use crate::auth::AdminUser;
use crate::core::statistics::CallStats;
use crate::error::ApiError;
use crate::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of one request, from `X-Request-Id` when the caller sent a sane one.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn accepted_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let sane = !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    sane.then(|| text.to_owned())
}

/// Takes or mints the request id, runs the request inside a span carrying it, echoes it back.
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(accepted_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.path());
    let mut response = tracing::Instrument::instrument(next.call(req), span).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(response)
}

/// Counts requests and times them by route pattern (not raw path, to bound label cardinality).
pub async fn record_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let state = req.app_data::<actix_web::web::Data<AppState>>().cloned();
    let response = next.call(req).await?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    // Model calls are also counted for the admin overview (atomics, no lock, no statement).
    if let Some(state) = state
        && CallStats::counts(&route, &method)
    {
        state
            .call_stats
            .record(response.status(), started.elapsed());
    }
    let method = method.to_string();
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    Ok(response)
}

/// Gives every error response without a JSON body (actix's own 404/405/413, payload errors)
/// the API.md error body, so clients can parse every error the same way.
pub async fn json_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, BoxBody>>, Error> {
    let response = next.call(req).await?;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return Ok(response.map_into_left_body());
    }
    let (req, _) = response.into_parts();
    let replaced = if matches!(status.as_u16(), 404 | 405) {
        // actix's own: a path no route matched, or a resource's other method.
        actix_web::ResponseError::error_response(&ApiError::unrouted(req.path()))
    } else {
        HttpResponse::build(status).json(ApiError::from_status(status).body())
    };
    Ok(ServiceResponse::new(req, replaced).map_into_right_body())
}

/// Gives every error of Anthropic's Messages route Anthropic's error body (with the same
/// status), so Anthropic's clients read our errors as theirs.
pub async fn anthropic_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, BoxBody>>, Error> {
    let response = next.call(req).await?;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return Ok(response.map_into_left_body());
    }
    let body = match response
        .response()
        .error()
        .and_then(|error| error.as_error::<ApiError>())
    {
        Some(error) => error.anthropic_body(),
        None => ApiError::from_status(status).anthropic_body(),
    };
    let headers = response.headers().clone();
    let (req, _) = response.into_parts();
    let mut replaced = HttpResponse::build(status).json(body);
    for (name, value) in &headers {
        // Retry-After and the rate-limit headers stay; the body's own headers are replaced.
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            replaced.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(ServiceResponse::new(req, replaced).map_into_right_body())
}

/// Refuses a request without an admin's session (401, or 403 for a user) before the route's
/// own extractors run, so no input of a non-admin is looked at, whatever its body or path.
/// The handlers still take `AdminUser` themselves, to know who the admin is.
pub async fn require_admin(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, BoxBody>>, Error> {
    if let Err(error) = AdminUser::from_request(req.request(), &mut Payload::None).await {
        return Ok(req.error_response(error).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// After a successful catalog write, reloads the call path's routes and key pools.
pub async fn reload_routes_after_write(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let writes = req.method() != actix_web::http::Method::GET;
    let state = req
        .app_data::<actix_web::web::Data<crate::state::AppState>>()
        .cloned();
    let response = next.call(req).await?;
    if let Some(state) = state.filter(|_| writes && response.status().is_success())
        && let Err(error) = state.reload_routing().await
    {
        // The periodic reload tries again.
        tracing::warn!(%error, "reloading routes after a catalog change");
    }
    Ok(response)
}

/// The security headers every response carries (each only if the handler set none): no MIME
/// sniffing, no framing by other sites, no referrer to other sites, and HSTS when configured
/// (`security.hsts_max_age_seconds`; only behind TLS, which the ingress terminates).
pub fn security_headers(hsts_max_age_seconds: u64) -> actix_web::middleware::DefaultHeaders {
    let headers = actix_web::middleware::DefaultHeaders::new()
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"))
        .add((header::REFERRER_POLICY, "no-referrer"));
    if hsts_max_age_seconds == 0 {
        return headers;
    }
    headers.add((
        header::STRICT_TRANSPORT_SECURITY,
        format!("max-age={hsts_max_age_seconds}; includeSubDomains"),
    ))
}

/// `Cache-Control: no-store` on every API answer (`/v1/...`) that did not set its own: they
/// carry session tokens, key secrets, balances; no shared or browser cache may keep them.
pub async fn no_store_api(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let api = req.path().starts_with("/v1/");
    let mut response = next.call(req).await?;
    if api && !response.headers().contains_key(header::CACHE_CONTROL) {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    Ok(response)
}
