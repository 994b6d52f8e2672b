//! Top-up orders: creation, completion by an admin, and completion by a signed payment callback.

use chrono::Utc;
use domain::Money;
use persistence::orders::{self, CompletedOrder, Completion, Order};
use persistence::{Page, Paged, StoreError};
use secrecy::ExposeSecret;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::secrets::{generate_order_no, verify_payment_signature};
use crate::state::AppState;

/// Order amounts are whole cents.
const ORDER_DECIMALS: i64 = 2;

pub async fn create(state: &AppState, user_id: i64, amount: &Money) -> Result<Order, ApiError> {
    if !amount.is_positive() {
        return Err(ApiError::InvalidRequest(
            "amount must be greater than 0".to_owned(),
        ));
    }
    if amount.as_decimal().with_scale(ORDER_DECIMALS) != *amount.as_decimal() {
        return Err(ApiError::InvalidRequest(
            "amount must have at most 2 decimals".to_owned(),
        ));
    }
    if amount > &state.max_order_amount {
        return Err(ApiError::InvalidRequest(format!(
            "amount must not exceed {}",
            state.max_order_amount
        )));
    }
    let order_no = generate_order_no().map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut conn = state.conn().await?;
    Ok(orders::create(&mut conn, user_id, &order_no, amount).await?)
}

pub async fn list(
    state: &AppState,
    user_id: Option<i64>,
    page: Page,
) -> Result<Paged<Order>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(orders::list(&mut conn, user_id, page).await?)
}

/// A store error about order `order_no` as the API's: a missing order is a 404 naming it.
fn order_error(order_no: &str) -> impl FnOnce(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound => ApiError::NotFound(format!("order {order_no} not found")),
        other => other.into(),
    }
}

/// The one way an order is completed, for admins and payment callbacks alike.
async fn complete(
    state: &AppState,
    order_no: &str,
    completion: Completion<'_>,
) -> Result<CompletedOrder, ApiError> {
    let mut conn = state.conn().await?;
    orders::complete(&mut conn, order_no, completion)
        .await
        .map_err(order_error(order_no))
}

/// Marks a PENDING order FAILED (its payment did not happen); not PENDING 409, unknown 404.
pub async fn fail_by_admin(state: &AppState, order_no: &str) -> Result<Order, ApiError> {
    let mut conn = state.conn().await?;
    orders::fail(&mut conn, order_no)
        .await
        .map_err(order_error(order_no))
}

pub async fn complete_by_admin(
    state: &AppState,
    order_no: &str,
    admin_id: i64,
) -> Result<CompletedOrder, ApiError> {
    complete(
        state,
        order_no,
        Completion::Admin {
            actor_user_id: admin_id,
        },
    )
    .await
}

/// What the payment provider posts when an order is paid.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentEvent {
    /// The provider's unique id of this event; a replayed event is refused.
    pub event_id: String,
    pub order_no: String,
    #[schema(value_type = String, example = "100.00")]
    pub amount: Money,
    /// Only `paid` completes an order.
    #[schema(example = "paid")]
    pub status: String,
}

/// Verifies `X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`, the timestamp's
/// freshness, then completes the order through the same function as an admin would.
pub async fn complete_by_payment(
    state: &AppState,
    signature_header: Option<&str>,
    body: &[u8],
) -> Result<CompletedOrder, ApiError> {
    let secret = state
        .payment_webhook_secret
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("payment callbacks are not configured".to_owned()))?;
    let bad_signature = || ApiError::Unauthorized("invalid payment signature".to_owned());
    let header = signature_header.ok_or_else(bad_signature)?;
    let (mut timestamp, mut signature) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = Some(value),
            Some(("v1", value)) => signature = Some(value),
            _ => {}
        }
    }
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(bad_signature());
    };
    if !verify_payment_signature(
        secret.expose_secret().as_bytes(),
        timestamp,
        body,
        signature,
    ) {
        return Err(bad_signature());
    }
    let sent_at: i64 = timestamp.parse().map_err(|_| bad_signature())?;
    if (Utc::now().timestamp() - sent_at).abs() > state.payment_tolerance_seconds {
        return Err(ApiError::Unauthorized(
            "payment signature timestamp is outside the allowed window".to_owned(),
        ));
    }
    let event: PaymentEvent = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid payment event: {e}")))?;
    if event.status != "paid" {
        return Err(ApiError::InvalidRequest(format!(
            "unsupported payment status {:?}; only \"paid\" completes an order",
            event.status
        )));
    }
    if event.event_id.trim().is_empty() || event.event_id.len() > 200 {
        return Err(ApiError::InvalidRequest(
            "event_id must be 1 to 200 characters".to_owned(),
        ));
    }
    complete(
        state,
        &event.order_no,
        Completion::Payment {
            event_id: &event.event_id,
            amount: &event.amount,
        },
    )
    .await
}
