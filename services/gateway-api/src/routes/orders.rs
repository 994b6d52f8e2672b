//! `/v1/orders`: completing an order, by an admin or by the payment provider's signed callback.

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;

use crate::auth::AdminUser;
use crate::core::orders::{self, PaymentEvent};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::views::OrderView;

/// Payment callbacks are small; anything bigger is refused before it is read.
const MAX_CALLBACK_BYTES: usize = 16 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/orders/{order_no}/complete", web::post().to(complete))
        .route("/v1/orders/{order_no}/fail", web::post().to(fail))
        .route("/v1/payments/callback", web::post().to(payment_callback));
}

/// Mark a PENDING order paid and credit its amount once (stands in for a payment provider).
#[utoipa::path(post, path = "/v1/orders/{order_no}/complete", tag = "orders",
    security(("token" = [])), params(("order_no" = String, Path)),
    responses((status = 200, body = OrderView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the order is not PENDING")))]
pub async fn complete(
    state: web::Data<AppState>,
    admin: AdminUser,
    order_no: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let completed = orders::complete_by_admin(&state, &order_no, admin.0.id).await?;
    Ok(HttpResponse::Ok().json(OrderView::from(completed.order)))
}

/// Mark a PENDING order FAILED (its payment did not happen); nothing is credited.
#[utoipa::path(post, path = "/v1/orders/{order_no}/fail", tag = "orders",
    security(("token" = [])), params(("order_no" = String, Path)),
    responses((status = 200, body = OrderView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the order is not PENDING")))]
pub async fn fail(
    state: web::Data<AppState>,
    _admin: AdminUser,
    order_no: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let failed = orders::fail_by_admin(&state, &order_no).await?;
    Ok(HttpResponse::Ok().json(OrderView::from(failed)))
}

/// The payment provider's callback: completes the order through the same function as the admin
/// route. Needs `X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "t.body")>`; refuses
/// bad signatures, stale timestamps, replayed events, unknown orders and a different amount.
#[utoipa::path(post, path = "/v1/payments/callback", tag = "orders", request_body = PaymentEvent,
    params(("X-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex hmac>")),
    responses((status = 200, body = OrderView), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn payment_callback(
    state: web::Data<AppState>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // The signature covers the raw bytes, so the body is read as bytes, not parsed JSON.
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::InvalidRequest(format!("reading body: {e}")))?;
        if body.len() + chunk.len() > MAX_CALLBACK_BYTES {
            return Err(ApiError::PayloadTooLarge(
                "request body is too large".to_owned(),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let signature = req
        .headers()
        .get("x-signature")
        .and_then(|v| v.to_str().ok());
    let completed = orders::complete_by_payment(&state, signature, &body).await?;
    Ok(HttpResponse::Ok().json(OrderView::from(completed.order)))
}
