//! A finished call's charge on its way to billing-worker (through the one charge pipeline,
//! `charges::ChargeSink`), and the release of a failed call's hold.

use chrono::Utc;
use domain::{BillingMessage, Money, Usage};
use persistence::Pool;
use uuid::Uuid;

use crate::error::ApiError;
use catalog::Route;
use charges::ChargeSink;
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
        lease_id: None,
        occurred_at: Utc::now(),
    }
}

/// Waits until the charge is durable (confirmed by the broker, or in the Postgres outbox):
/// the caller sends the last byte of its answer only after this, so no crash of this process
/// loses an answered call. Charges finishing while a publish awaits its confirm share the next
/// publish (see `charges::ChargeSink`). `Err` when neither the broker nor Postgres took it:
/// the answer is then withheld, as it could not be billed.
pub async fn make_durable(charges: &ChargeSink, message: BillingMessage) -> Result<(), ApiError> {
    charges.make_durable(message).await.map_err(|_| {
        ApiError::Unavailable(
            "billing is unavailable; the call was not charged, try again".to_owned(),
        )
    })
}

/// A failed call costs nothing: its hold is released before the error is answered.
pub async fn release(reservations: &Pool, request_id: Uuid) {
    let released = match reservations.get().await {
        Ok(mut conn) => persistence::billing::release_hold(&mut conn, request_id).await,
        Err(error) => Err(persistence::StoreError::from(error)),
    };
    if let Err(error) = released {
        // The sweeper releases it when it expires.
        tracing::warn!(%error, %request_id, "releasing a hold failed");
    }
}
