//! The one place that declares RabbitMQ queues and exchanges, with every option explained.
//!
//! For each work queue `<q>` (`model_invocation_queue`, `billing_log_queue`):
//!
//! ```text
//!  publish ──► <q> (quorum) ──consumer──► handler
//!               │   ▲  reject(requeue=false) or delivery limit exceeded
//!               │   │            │
//!               │   │            ▼
//!               │   │      <prefix>dead_letter (direct exchange) ──► <q>.dlq (quorum, no consumer)
//!               │   │
//!   Retry(d):   │   └── expiry: dead-lettered via "" (default exchange) with routing key <q>
//!   publish ──► <q>.retry (quorum, no consumer, per-message `expiration` = d)
//! ```
//!
//! Why the retry queue: RabbitMQ 3.10 has no delayed delivery without a plugin, and
//! requeueing at once (nack) would hammer a failing dependency in a tight loop. The classic
//! pattern is a queue that nobody consumes: a message published there with `expiration`
//! waits out its TTL and is then dead-lettered back to the work queue. Caveat: TTLs are
//! enforced at the head of a queue, so a short delay queued behind a longer one waits for
//! it; the delay is therefore "at least", which is what a backoff needs.
//!
//! Re-declaring with the same arguments is a no-op; declaring with different ones fails
//! with PRECONDITION_FAILED, so changing an argument means new queue names (or a policy).

use amqprs::channel::{
    Channel, ExchangeDeclareArguments, ExchangeDeleteArguments, ExchangeType, QueueBindArguments,
    QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::{FieldTable, FieldValue};

use crate::MessagingError;

/// Jobs to run: `{job_id}` messages from the gateway to the invocation worker.
pub const MODEL_INVOCATION_QUEUE: &str = "model_invocation_queue";
/// Charges to settle: usage messages to the billing worker.
pub const BILLING_LOG_QUEUE: &str = "billing_log_queue";

/// Deliveries (first + redeliveries) after which a quorum queue dead-letters a message
/// that keeps coming back (worker crash loops, nack-requeue), instead of looping forever.
pub const DELIVERY_LIMIT: i32 = 10;

/// The queues that serve one kind of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSet {
    /// The logical name without prefix, e.g. `billing_log_queue`; used as a metrics label.
    pub base: String,
    /// Where producers publish and the worker consumes.
    pub work: String,
    /// The delay queue of `Outcome::Retry`: `<work>.retry`.
    pub retry: String,
    /// Poison messages end here for an operator to inspect: `<work>.dlq`.
    pub dead_letter: String,
}

/// Every name of the topology, prefixed for isolation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNames {
    pub prefix: String,
    /// Direct exchange receiving rejected / over-delivered messages of both work queues.
    pub dead_letter_exchange: String,
    pub model_invocation: QueueSet,
    pub billing_log: QueueSet,
}

impl QueueNames {
    pub fn all(&self) -> [&QueueSet; 2] {
        [&self.model_invocation, &self.billing_log]
    }

    /// Finds the set of a work queue by its prefixed or its logical name.
    pub fn resolve(&self, queue: &str) -> Option<&QueueSet> {
        self.all()
            .into_iter()
            .find(|set| set.work == queue)
            .or_else(|| self.all().into_iter().find(|set| set.base == queue))
    }
}

pub fn queue_names(prefix: &str) -> QueueNames {
    let set = |base: &str| {
        let work = format!("{prefix}{base}");
        QueueSet {
            base: base.to_owned(),
            retry: format!("{work}.retry"),
            dead_letter: format!("{work}.dlq"),
            work,
        }
    };
    QueueNames {
        prefix: prefix.to_owned(),
        dead_letter_exchange: format!("{prefix}dead_letter"),
        model_invocation: set(MODEL_INVOCATION_QUEUE),
        billing_log: set(BILLING_LOG_QUEUE),
    }
}

fn put(args: &mut FieldTable, key: &str, value: FieldValue) -> Result<(), MessagingError> {
    let key = key
        .try_into()
        .map_err(|_| MessagingError::Topology(format!("argument name too long: {key}")))?;
    args.insert(key, value);
    Ok(())
}

fn text(value: &str) -> Result<FieldValue, MessagingError> {
    let long = value
        .try_into()
        .map_err(|_| MessagingError::Topology(format!("argument value too long: {value}")))?;
    Ok(FieldValue::S(long))
}

/// Arguments shared by every queue we declare.
fn quorum_arguments() -> Result<FieldTable, MessagingError> {
    let mut args = FieldTable::new();
    // Replicated, durable queue (Raft); survives a node loss and counts deliveries, which is
    // what makes `x-delivery-limit` and the x-delivery-count header possible.
    put(&mut args, "x-queue-type", text("quorum")?)?;
    Ok(args)
}

/// Dead-letters of this queue are only removed from it once the target queue confirmed
/// them (the default, at-most-once, can lose them on the way).
fn at_least_once_dead_lettering(args: &mut FieldTable) -> Result<(), MessagingError> {
    put(args, "x-dead-letter-strategy", text("at-least-once")?)?;
    // Required by at-least-once: a full queue refuses new publishes instead of dropping its
    // head (no max length is set, so this never triggers today).
    put(args, "x-overflow", text("reject-publish")?)
}

/// Declares the exchanges, queues and bindings; idempotent.
pub async fn declare_topology(channel: &Channel, names: &QueueNames) -> Result<(), MessagingError> {
    // Durable so the binding to the DLQs survives a broker restart; direct so each work
    // queue's dead letters reach only its own DLQ.
    channel
        .exchange_declare(
            ExchangeDeclareArguments::of_type(&names.dead_letter_exchange, ExchangeType::Direct)
                .durable(true)
                .finish(),
        )
        .await?;

    for set in names.all() {
        // The DLQ: a plain durable quorum queue with no dead-lettering of its own.
        channel
            .queue_declare(
                QueueDeclareArguments::durable_client_named(&set.dead_letter)
                    .arguments(quorum_arguments()?)
                    .finish(),
            )
            .await?;
        channel
            .queue_bind(QueueBindArguments::new(
                &set.dead_letter,
                &names.dead_letter_exchange,
                &set.dead_letter,
            ))
            .await?;

        // The work queue.
        let mut work = quorum_arguments()?;
        // Rejected (Outcome::DeadLetter) and over-delivered messages go to the DLX ...
        put(
            &mut work,
            "x-dead-letter-exchange",
            text(&names.dead_letter_exchange)?,
        )?;
        // ... with a routing key naming this queue's DLQ (the published key differs for
        // messages coming back from the retry queue, so it is set explicitly).
        put(
            &mut work,
            "x-dead-letter-routing-key",
            text(&set.dead_letter)?,
        )?;
        // A message delivered this many times without an ack is dead-lettered, not looped.
        put(&mut work, "x-delivery-limit", FieldValue::I(DELIVERY_LIMIT))?;
        at_least_once_dead_lettering(&mut work)?;
        channel
            .queue_declare(
                QueueDeclareArguments::durable_client_named(&set.work)
                    .arguments(work)
                    .finish(),
            )
            .await?;

        // The retry (delay) queue: never consumed; messages wait out their `expiration`.
        let mut retry = quorum_arguments()?;
        // Expired messages are dead-lettered to the default exchange ("") ...
        put(&mut retry, "x-dead-letter-exchange", text("")?)?;
        // ... whose routing key is a queue name: straight back into the work queue.
        put(&mut retry, "x-dead-letter-routing-key", text(&set.work)?)?;
        // A retried message must not be lost on its way back.
        at_least_once_dead_lettering(&mut retry)?;
        channel
            .queue_declare(
                QueueDeclareArguments::durable_client_named(&set.retry)
                    .arguments(retry)
                    .finish(),
            )
            .await?;
    }
    Ok(())
}

/// Deletes every queue and exchange of `names` (tests, and tearing down a prefix).
pub async fn delete_topology(channel: &Channel, names: &QueueNames) -> Result<(), MessagingError> {
    for set in names.all() {
        for queue in [&set.work, &set.retry, &set.dead_letter] {
            channel
                .queue_delete(QueueDeleteArguments::new(queue))
                .await?;
        }
    }
    channel
        .exchange_delete(ExchangeDeleteArguments::new(&names.dead_letter_exchange))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let names = queue_names("t1_");
        assert_eq!(names.model_invocation.work, "t1_model_invocation_queue");
        assert_eq!(
            names.model_invocation.retry,
            "t1_model_invocation_queue.retry"
        );
        assert_eq!(names.billing_log.dead_letter, "t1_billing_log_queue.dlq");
        assert_eq!(names.dead_letter_exchange, "t1_dead_letter");
    }

    #[test]
    fn resolve_accepts_logical_and_prefixed_names() {
        let names = queue_names("t1_");
        assert_eq!(
            names.resolve("billing_log_queue").map(|s| s.work.as_str()),
            Some("t1_billing_log_queue")
        );
        assert_eq!(
            names
                .resolve("t1_billing_log_queue")
                .map(|s| s.work.as_str()),
            Some("t1_billing_log_queue")
        );
        assert!(names.resolve("other").is_none());
        assert!(names.resolve("t1_billing_log_queue.dlq").is_none());
    }
}
