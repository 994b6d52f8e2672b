//! Handing a finished call's charge to billing-worker: published (persistent, confirmed, in
//! batches under load) to `billing_log_queue`, or parked in the Postgres outbox when the broker
//! cannot take it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::{BillingBatch, BillingMessage, Money, Usage};
use messaging::{BILLING_LOG_QUEUE, Broker};
use persistence::Pool;
use tokio::sync::{Semaphore, mpsc};
use uuid::Uuid;

use crate::state::{AppState, Background};
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

/// Hands the charge to the publisher; the client's answer never waits for the broker.
pub fn emit(state: Arc<AppState>, message: BillingMessage) {
    state.charges.send(message, &state.background);
}

/// Charges of finished calls on their way to `billing_log_queue`. One task publishes them: it
/// takes what queues up within `linger` of the first charge (up to `batch_max`) as one
/// message, so the broker stores one message per batch rather than one per call.
pub struct ChargeQueue {
    sender: mpsc::UnboundedSender<BillingMessage>,
    publisher: Publisher,
}

#[derive(Clone)]
struct Publisher {
    broker: Broker,
    pool: Pool,
}

impl ChargeQueue {
    /// Starts the publishing task on `background`; it stops (after publishing what is queued)
    /// when `background` drains.
    pub fn start(
        broker: Broker,
        pool: Pool,
        background: &Background,
        batch_max: usize,
        in_flight: usize,
        linger: Duration,
    ) -> ChargeQueue {
        let (sender, receiver) = mpsc::unbounded_channel();
        let publisher = Publisher { broker, pool };
        background.spawn(publish_batches(
            publisher.clone(),
            receiver,
            background.clone(),
            batch_max.max(1),
            in_flight.max(1),
            linger,
        ));
        ChargeQueue { sender, publisher }
    }

    fn send(&self, message: BillingMessage, background: &Background) {
        metrics::gauge!("billing_publish_queue").increment(1.0);
        if let Err(mpsc::error::SendError(message)) = self.sender.send(message) {
            // The publisher has stopped (shutdown): deliver this one by itself.
            metrics::gauge!("billing_publish_queue").decrement(1.0);
            let publisher = self.publisher.clone();
            background.spawn(async move { publisher.deliver(vec![message]).await });
        }
    }
}

async fn publish_batches(
    publisher: Publisher,
    mut receiver: mpsc::UnboundedReceiver<BillingMessage>,
    background: Background,
    batch_max: usize,
    in_flight: usize,
    linger: Duration,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let closing = background.closing();
    loop {
        // While every slot is busy, charges wait in the channel and form the next batch.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let first = tokio::select! {
            biased;
            next = receiver.recv() => next,
            () = closing.cancelled() => {
                // Shutdown: take no more, publish what is queued, then stop.
                receiver.close();
                receiver.recv().await
            }
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        // Let the batch fill for up to `linger` (each message costs the broker a replicated
        // write whatever its size); the calls were answered already, only billing waits.
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < batch_max {
            let next = tokio::select! {
                biased;
                next = receiver.recv() => next,
                () = tokio::time::sleep_until(deadline) => None,
                () = closing.cancelled() => receiver.try_recv().ok(),
            };
            match next {
                Some(next) => batch.push(next),
                None => break,
            }
        }
        metrics::gauge!("billing_publish_queue").decrement(batch.len() as f64);
        let publisher = publisher.clone();
        background.spawn(async move {
            publisher.deliver(batch).await;
            drop(slot);
        });
    }
}

impl Publisher {
    /// Publishes the charges as one message with confirm (a single charge in the one-charge
    /// shape); if the broker does not confirm, parks each in the outbox (settled by the
    /// sweeper). Only if Postgres also fails is a charge lost, and then loudly: its hold still
    /// expires.
    async fn deliver(&self, charges: Vec<BillingMessage>) {
        let count = charges.len() as u64;
        metrics::histogram!("billing_publish_batch_size").record(count as f64);
        let Some((body, id)) = BillingBatch::publishable(charges) else {
            return;
        };
        match self
            .broker
            .publish_json(BILLING_LOG_QUEUE, &body, &id)
            .await
        {
            Ok(()) => {
                metrics::counter!("billing_published_total", "path" => "broker").increment(count)
            }
            Err(error) => {
                tracing::warn!(%error, message_id = %id, count, "billing publish failed; using the outbox");
                let charges = match BillingBatch::from_json_slice(&body) {
                    Ok(batch) => batch.charges,
                    Err(error) => {
                        tracing::error!(%error, message_id = %id, "charges not readable; LOST");
                        return;
                    }
                };
                for charge in charges {
                    self.park(charge).await;
                }
            }
        }
    }

    async fn park(&self, message: BillingMessage) {
        let id = message.request_id;
        let stored = match serde_json::to_value(&message) {
            Ok(payload) => match self.pool.get().await {
                Ok(mut conn) => persistence::billing::outbox_insert(&mut conn, id, &payload).await,
                Err(error) => Err(persistence::StoreError::from(error)),
            },
            Err(error) => Err(persistence::StoreError::Pool(error.to_string())),
        };
        match stored {
            Ok(()) => metrics::counter!("billing_published_total", "path" => "outbox").increment(1),
            Err(error) => {
                metrics::counter!("billing_lost_total").increment(1);
                tracing::error!(%error, request_id = %id, cost = %message.cost, "charge could not be kept; LOST");
            }
        }
    }
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
