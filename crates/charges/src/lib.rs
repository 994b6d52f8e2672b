//! The one charge pipeline of calls and jobs: every charge on its way to billing-worker goes
//! through a [`ChargeSink`], which makes it durable (confirmed by the broker, or written to the
//! Postgres outbox) and tells the caller when it is.
//!
//! Group commit: one publish per free slot carries every charge that arrived while the earlier
//! publishes awaited their confirms (up to `batch_max`), so under load the broker stores one
//! message per batch and at low load a lone charge waits for no one. An optional linger lets
//! charges that are already safe (jobs: in the outbox with their completion) wait for company.

use std::time::Duration;

use domain::{BillingBatch, BillingMessage};
use messaging::{BILLING_LOG_QUEUE, Broker};
use persistence::batch::Batcher;
use persistence::{Pool, StoreError};
use uuid::Uuid;

/// Where a charge already is when it is handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Only in this process's memory: the sink must make it durable (a finished call).
    InMemory,
    /// Already in the outbox, written with the work's own result (a completed job): publishing
    /// only makes billing faster, and the outbox row is forgotten once the broker confirms.
    InOutbox,
}

#[derive(Debug, Clone)]
struct Entry {
    charge: BillingMessage,
    kept: Kept,
}

/// The charge could not be made durable: neither the broker nor Postgres took it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the charge could not be made durable")]
pub struct NotDurable;

/// How a sink batches.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Charges in one message at most.
    pub batch_max: usize,
    /// Publishes awaiting their confirm at once.
    pub in_flight: usize,
    /// Once a slot is free and a charge is in, how long more may join. Zero for charges whose
    /// caller waits (a call's answer): group commit alone batches them under load.
    pub linger: Duration,
}

/// Hands charges to `billing_log_queue`; see the module documentation.
#[derive(Clone)]
pub struct ChargeSink {
    batcher: Batcher<Entry, bool>,
}

impl ChargeSink {
    /// Starts the publishing task on the current tokio runtime; it ends, after publishing what
    /// is queued, when every handle is dropped. `outbox` takes charges the broker would not.
    pub fn start(broker: Broker, outbox: Pool, settings: &SinkSettings) -> ChargeSink {
        let batcher = Batcher::start_lingering(
            settings.batch_max.max(1),
            settings.in_flight.max(1),
            settings.linger,
            move |entries: Vec<Entry>| {
                let broker = broker.clone();
                let outbox = outbox.clone();
                async move { Ok(deliver(&broker, &outbox, entries).await) }
            },
        );
        ChargeSink { batcher }
    }

    /// Resolves once `charge` is durable; the caller may then answer. `Err` only when neither
    /// the broker nor Postgres took it (logged as lost).
    pub async fn make_durable(&self, charge: BillingMessage) -> Result<(), NotDurable> {
        metrics::gauge!("billing_publish_queue").increment(1.0);
        let entry = Entry {
            charge,
            kept: Kept::InMemory,
        };
        let durable = self.batcher.call(entry).await;
        metrics::gauge!("billing_publish_queue").decrement(1.0);
        match durable {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => Err(NotDurable),
        }
    }

    /// Publishes a charge already in the outbox, without waiting; `false` if the sink stopped
    /// (the outbox sweeper settles it then).
    pub fn forward_from_outbox(&self, charge: BillingMessage) -> bool {
        self.batcher.send(Entry {
            charge,
            kept: Kept::InOutbox,
        })
    }
}

/// Publishes `entries` as one confirmed message; if the broker does not confirm, writes those
/// only in memory to the outbox. Answers, per entry, whether it is durable.
async fn deliver(broker: &Broker, outbox: &Pool, entries: Vec<Entry>) -> Vec<bool> {
    let count = entries.len();
    metrics::histogram!("billing_publish_batch_size").record(count as f64);
    let charges: Vec<BillingMessage> = entries.iter().map(|e| e.charge.clone()).collect();
    let Some((body, message_id)) = BillingBatch::publishable(charges) else {
        return Vec::new();
    };
    match broker
        .publish_json(BILLING_LOG_QUEUE, &body, &message_id)
        .await
    {
        Ok(()) => {
            metrics::counter!("billing_published_total", "path" => "broker")
                .increment(count as u64);
            let in_outbox: Vec<Uuid> = entries
                .iter()
                .filter(|e| e.kept == Kept::InOutbox)
                .map(|e| e.charge.request_id)
                .collect();
            if !in_outbox.is_empty() {
                // Losing this delete only makes the sweeper settle them again: no change.
                if let Err(error) = forget(outbox, &in_outbox).await {
                    tracing::warn!(%error, count = in_outbox.len(), "removing published charges from the outbox failed");
                }
            }
            vec![true; count]
        }
        Err(error) => {
            let parked: Vec<(Uuid, serde_json::Value)> = entries
                .iter()
                .filter(|e| e.kept == Kept::InMemory)
                .filter_map(|e| match serde_json::to_value(&e.charge) {
                    Ok(payload) => Some((e.charge.request_id, payload)),
                    Err(error) => {
                        tracing::error!(%error, request_id = %e.charge.request_id, "charge not serialisable");
                        None
                    }
                })
                .collect();
            tracing::warn!(%error, %message_id, count, parked = parked.len(), "billing publish failed; using the outbox");
            let parked_ok = parked.is_empty() || park(outbox, &parked).await;
            let parked: std::collections::HashSet<Uuid> =
                parked.into_iter().map(|(id, _)| id).collect();
            if parked_ok {
                metrics::counter!("billing_published_total", "path" => "outbox")
                    .increment(parked.len() as u64);
            }
            entries
                .iter()
                .map(|e| {
                    let durable = e.kept == Kept::InOutbox
                        || (parked_ok && parked.contains(&e.charge.request_id));
                    if !durable {
                        metrics::counter!("billing_lost_total").increment(1);
                        tracing::error!(request_id = %e.charge.request_id, cost = %e.charge.cost,
                            "charge could not be kept; its call is not answered");
                    }
                    durable
                })
                .collect()
        }
    }
}

async fn park(outbox: &Pool, parked: &[(Uuid, serde_json::Value)]) -> bool {
    let stored = match outbox.get().await {
        Ok(mut conn) => persistence::billing::outbox_insert_many(&mut conn, parked).await,
        Err(error) => Err(StoreError::from(error)),
    };
    match stored {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(%error, count = parked.len(), "writing charges to the outbox failed");
            false
        }
    }
}

async fn forget(outbox: &Pool, request_ids: &[Uuid]) -> Result<(), StoreError> {
    let mut conn = outbox.get().await?;
    persistence::billing::outbox_delete_requests(&mut conn, request_ids).await
}
