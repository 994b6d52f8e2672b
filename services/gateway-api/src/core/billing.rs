//! Handing a finished call's charge to billing-worker: published (persistent, confirmed) to
//! `billing_log_queue`, or parked in the Postgres outbox when the broker cannot take it.

use std::sync::Arc;

use chrono::Utc;
use domain::{BillingMessage, Money, Usage};
use messaging::BILLING_LOG_QUEUE;
use uuid::Uuid;

use crate::state::AppState;
use catalog::Route;

/// Who called what, for the charge of one call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: i64,
    pub access_key_id: i64,
}

pub fn charge_message(
    request_id: Uuid,
    caller: &Caller,
    route: &Route,
    usage: Usage,
    cost: Money,
) -> BillingMessage {
    BillingMessage {
        request_id,
        user_id: caller.user_id,
        access_key_id: Some(caller.access_key_id),
        model_id: route.model_id,
        model_name: route.name.clone(),
        usage,
        cost,
        hold_id: None,
        occurred_at: Utc::now(),
    }
}

/// Sends the charge in the background: the client's answer never waits for the broker.
pub fn emit(state: Arc<AppState>, message: BillingMessage) {
    let background = state.background.clone();
    background.spawn(async move { deliver(&state, message).await });
}

/// Publishes with confirm; on failure parks the charge in the outbox (settled by the sweeper).
/// Only if Postgres also fails is the charge lost, and then loudly: its hold still expires.
pub async fn deliver(state: &AppState, message: BillingMessage) {
    let body = message.to_json_bytes();
    let id = message.request_id.to_string();
    match state
        .broker
        .publish_json(BILLING_LOG_QUEUE, &body, &id)
        .await
    {
        Ok(()) => metrics::counter!("billing_published_total", "path" => "broker").increment(1),
        Err(error) => {
            tracing::warn!(%error, request_id = %id, "billing publish failed; using the outbox");
            let payload: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(payload) => payload,
                Err(error) => {
                    tracing::error!(%error, request_id = %id, "charge not serialisable; LOST");
                    return;
                }
            };
            let stored = match state.pool.get().await {
                Ok(mut conn) => {
                    persistence::billing::outbox_insert(&mut conn, message.request_id, &payload)
                        .await
                }
                Err(error) => Err(persistence::StoreError::from(error)),
            };
            match stored {
                Ok(()) => {
                    metrics::counter!("billing_published_total", "path" => "outbox").increment(1)
                }
                Err(error) => {
                    metrics::counter!("billing_lost_total").increment(1);
                    tracing::error!(%error, request_id = %id, cost = %message.cost, "charge could not be kept; LOST");
                }
            }
        }
    }
}

/// A failed call costs nothing: its hold is released before the error is answered.
pub async fn release(state: &AppState, request_id: Uuid) {
    let released = match state.pool.get().await {
        Ok(mut conn) => persistence::billing::release_hold(&mut conn, request_id).await,
        Err(error) => Err(persistence::StoreError::from(error)),
    };
    if let Err(error) = released {
        // The sweeper releases it when it expires.
        tracing::warn!(%error, %request_id, "releasing a hold failed");
    }
}
