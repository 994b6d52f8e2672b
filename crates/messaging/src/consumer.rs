//! The consumer loop: bounded concurrency, ack only after the handler returned (and so
//! committed), delayed retry, dead-lettering, re-subscription after reconnects and a
//! graceful stop that finishes in-flight work.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amqprs::channel::{
    BasicAckArguments, BasicCancelArguments, BasicConsumeArguments, BasicNackArguments,
    BasicQosArguments, BasicRejectArguments, Channel, ConsumerMessage,
};
use amqprs::{FieldTable, FieldValue};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::{JoinError, JoinHandle, JoinSet};

use crate::broker::{RETRY_COUNT_HEADER, Session};
use crate::confirms::ConsumerCallback;
use crate::topology::{QueueSet, declare_topology};
use crate::{Broker, MessagingError};

/// Pause before re-subscribing after the subscription was lost, growing up to the max.
const RESUBSCRIBE_BACKOFF_START: Duration = Duration::from_millis(200);
const RESUBSCRIBE_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A shutdown step talking to a broker that may be unreachable gives up after this.
const STOP_STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// What the consumer loop does with a message once its handler returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or nothing to do): remove it from the queue.
    Ack,
    /// Try again later: re-published to the retry queue with this delay, then acked.
    Retry(Duration),
    /// Never going to work: rejected without requeue, so the DLX moves it to `<queue>.dlq`.
    DeadLetter(String),
}

/// One message as the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    /// The broker delivered it before (to us or another consumer) without an ack.
    pub redelivered: bool,
    /// `x-delivery-count` of quorum queues: earlier failed deliveries of this copy.
    pub delivery_count: Option<i64>,
    /// Times this message already went through the retry queue (`Outcome::Retry`).
    pub retry_count: u32,
}

/// Business logic of a queue. It must commit its effects before returning: the message is
/// acked right after, and a crash before the ack redelivers it (so it must be idempotent).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, delivery: Delivery) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>>;
}

/// Whether a consumer is currently subscribed (for readiness).
#[derive(Debug, Clone, Default)]
pub struct ConsumerStatus(Arc<AtomicBool>);

impl ConsumerStatus {
    pub fn is_running(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn set(&self, running: bool, queue: &str) {
        self.0.store(running, Ordering::SeqCst);
        metrics::gauge!("messaging_consumer_running", "queue" => queue.to_owned())
            .set(if running { 1.0 } else { 0.0 });
    }
}

/// A consumer of one work queue; [`Consumer::run`] drives it until shutdown.
pub struct Consumer {
    broker: Broker,
    queues: QueueSet,
    prefetch: u16,
    handler: Arc<dyn Handler>,
    status: ConsumerStatus,
    drain_timeout: Option<Duration>,
}

/// Consumes `queue` with up to `prefetch` concurrent handlers until `shutdown` resolves,
/// then stops consuming, lets in-flight handlers finish, acks them and returns.
pub async fn consume(
    broker: &Broker,
    queue: &str,
    prefetch: u16,
    handler: Arc<dyn Handler>,
    shutdown: impl Future,
) -> Result<(), MessagingError> {
    Consumer::new(broker, queue, prefetch, handler)?
        .run(shutdown)
        .await
}

enum Served {
    Shutdown,
    Lost,
}

impl Consumer {
    /// `queue` is a work queue, by logical or prefixed name. `prefetch` 0 is taken as 1.
    pub fn new(
        broker: &Broker,
        queue: &str,
        prefetch: u16,
        handler: Arc<dyn Handler>,
    ) -> Result<Self, MessagingError> {
        Ok(Self {
            broker: broker.clone(),
            queues: broker.resolve(queue)?.clone(),
            prefetch: prefetch.max(1),
            handler,
            status: ConsumerStatus::default(),
            drain_timeout: None,
        })
    }

    /// At shutdown, abandon handlers still running after `timeout` (their messages stay
    /// unacked and are redelivered). Without it, shutdown waits for every handler.
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = Some(timeout);
        self
    }

    pub fn status(&self) -> ConsumerStatus {
        self.status.clone()
    }

    pub async fn run(self, shutdown: impl Future) -> Result<(), MessagingError> {
        let shutdown = async {
            shutdown.await;
        };
        tokio::pin!(shutdown);
        let queue = self.queues.work.clone();
        metrics::gauge!("messaging_consumer_prefetch", "queue" => queue.clone())
            .set(f64::from(self.prefetch));
        let mut backoff = RESUBSCRIBE_BACKOFF_START;
        loop {
            let session = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                session = self.broker.next_session() => session,
            };
            match self.serve(&session, &mut shutdown).await {
                Ok(Served::Shutdown) => return Ok(()),
                Ok(Served::Lost) => {
                    tracing::warn!(%queue, "subscription lost; re-subscribing");
                    backoff = RESUBSCRIBE_BACKOFF_START;
                }
                Err(error) => {
                    tracing::warn!(%queue, %error, retry_in = ?backoff, "cannot subscribe");
                }
            }
            self.status.set(false, &queue);
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RESUBSCRIBE_BACKOFF_MAX);
        }
    }

    /// One subscription on one channel, until shutdown or until the subscription ends.
    async fn serve(
        &self,
        session: &Session,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Served, MessagingError> {
        let queue = self.queues.work.as_str();
        let channel = session.connection.open_channel(None).await?;
        channel
            .register_callback(ConsumerCallback {
                queue: queue.to_owned(),
            })
            .await?;
        // Idempotent; brings back a queue an operator deleted while we were connected.
        declare_topology(&channel, self.broker.queue_names()).await?;
        channel
            .basic_qos(BasicQosArguments::new(0, self.prefetch, false))
            .await?;
        let (consumer_tag, mut deliveries) = channel
            .basic_consume_rx(
                BasicConsumeArguments::new(queue, "")
                    .manual_ack(true)
                    .finish(),
            )
            .await?;
        self.status.set(true, queue);
        tracing::info!(queue, %consumer_tag, prefetch = self.prefetch, "consuming");

        let mut in_flight = InFlight::new(channel.clone(), queue);
        loop {
            tokio::select! {
                biased;
                () = shutdown.as_mut() => {
                    self.status.set(false, queue);
                    self.stop(&channel, &consumer_tag, &mut deliveries, &mut in_flight).await;
                    return Ok(Served::Shutdown);
                }
                Some(joined) = in_flight.tasks.join_next(), if !in_flight.tasks.is_empty() => {
                    in_flight.finished(joined);
                    // Handlers that finished meanwhile are acknowledged together.
                    while let Some(joined) = in_flight.tasks.try_join_next() {
                        in_flight.finished(joined);
                    }
                    in_flight.send_acks().await;
                }
                message = deliveries.recv() => match message {
                    Some(message) => {
                        let Some(tag) = message.deliver.as_ref().map(|d| d.delivery_tag()) else {
                            tracing::error!(queue, "delivery without a tag from amqprs");
                            continue;
                        };
                        in_flight.acks.delivered(tag);
                        in_flight.tasks.spawn(process(
                            message,
                            tag,
                            channel.clone(),
                            self.broker.clone(),
                            self.queues.clone(),
                            Arc::clone(&self.handler),
                        ));
                    }
                    None => {
                        // Channel or connection closed, or the broker cancelled us.
                        self.status.set(false, queue);
                        in_flight.drain(self.drain_timeout).await;
                        return Ok(Served::Lost);
                    }
                },
            }
        }
    }

    async fn stop(
        &self,
        channel: &Channel,
        consumer_tag: &str,
        deliveries: &mut UnboundedReceiver<ConsumerMessage>,
        in_flight: &mut InFlight,
    ) {
        let queue = self.queues.work.as_str();
        tracing::info!(
            queue,
            in_flight = in_flight.tasks.len(),
            "stopping consumer"
        );
        match tokio::time::timeout(
            STOP_STEP_TIMEOUT,
            channel.basic_cancel(BasicCancelArguments::new(consumer_tag)),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(queue, %error, "basic.cancel failed"),
            Err(_) => tracing::warn!(queue, "basic.cancel timed out"),
        }
        // Deliveries that arrived but never started go back to the queue for another worker.
        deliveries.close();
        while let Ok(message) = deliveries.try_recv() {
            if let Some(deliver) = message.deliver {
                let requeue = BasicNackArguments::new(deliver.delivery_tag(), false, true);
                if let Err(error) = channel.basic_nack(requeue).await {
                    tracing::warn!(queue, %error, "returning an unstarted delivery failed");
                }
            }
        }
        in_flight.drain(self.drain_timeout).await;
        match tokio::time::timeout(STOP_STEP_TIMEOUT, channel.clone().close()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(queue, %error, "closing the consumer channel"),
            Err(_) => tracing::warn!(queue, "closing the consumer channel timed out"),
        }
        tracing::info!(queue, "consumer stopped");
    }
}

/// The deliveries of one channel whose handlers run, and the acks they are owed.
struct InFlight {
    channel: Channel,
    queue: String,
    tasks: JoinSet<Settled>,
    acks: PendingAcks,
}

impl InFlight {
    fn new(channel: Channel, queue: &str) -> Self {
        Self {
            channel,
            queue: queue.to_owned(),
            tasks: JoinSet::new(),
            acks: PendingAcks::default(),
        }
    }

    fn finished(&mut self, joined: Result<Settled, JoinError>) {
        match joined {
            Ok(Settled::Ack(tag)) => self.acks.finished(tag),
            Ok(Settled::Done(tag)) => self.acks.settled_otherwise(tag),
            Err(error) => {
                // Its delivery stays outstanding, so no multiple ack covers it: the message
                // stays unacknowledged and comes back when the channel closes.
                if !error.is_cancelled() {
                    tracing::error!(queue = %self.queue, %error, "message task failed");
                }
            }
        }
    }

    /// Acknowledges the finished deliveries: those after which no earlier one is still running
    /// with one `basic.ack(multiple)`, the others one by one (never held back: unacked
    /// deliveries count against the prefetch).
    async fn send_acks(&mut self) {
        let acks = self.acks.take();
        if !acks.is_empty() && !self.channel.is_open() {
            // Gone with the channel: the broker redelivers them to the next consumer (each
            // handler is idempotent), so there is nothing to send them on.
            tracing::debug!(queue = %self.queue, count = acks.len(), "channel closed; acks dropped");
            return;
        }
        for (tag, multiple) in acks {
            metrics::counter!("messaging_ack_frames_total", "queue" => self.queue.clone())
                .increment(1);
            if let Err(error) = self
                .channel
                .basic_ack(BasicAckArguments::new(tag, multiple))
                .await
            {
                // The channel is gone; the broker redelivers the messages to the next consumer.
                tracing::warn!(queue = %self.queue, tag, %error, "acknowledging deliveries failed");
            }
        }
    }

    /// Waits for the running handlers, abandoning them after `timeout` if given (their
    /// messages stay unacked and are redelivered), and acknowledges those that finished.
    async fn drain(&mut self, timeout: Option<Duration>) {
        let all = async {
            while let Some(joined) = self.tasks.join_next().await {
                self.finished(joined);
            }
        };
        let completed = match timeout {
            None => {
                all.await;
                true
            }
            Some(timeout) => tokio::time::timeout(timeout, all).await.is_ok(),
        };
        if !completed {
            tracing::warn!(
                queue = %self.queue,
                abandoned = self.tasks.len(),
                "handlers still running after the drain timeout; their messages will be redelivered"
            );
            self.tasks.abort_all();
            while let Some(joined) = self.tasks.join_next().await {
                self.finished(joined);
            }
        }
        self.send_acks().await;
    }
}

/// How a delivery's task left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Handled: to be acknowledged (by the consumer loop, together with others).
    Ack(u64),
    /// Already rejected or returned to the queue by the task itself.
    Done(u64),
}

/// The acknowledgement state of one channel's deliveries. Every delivery is `delivered` once,
/// then either `finished` (to be acked) or `settled_otherwise` (rejected or requeued by its
/// task); a delivery that is neither stays outstanding and is never covered by an ack.
#[derive(Debug, Default)]
struct PendingAcks {
    /// Delivered and not yet settled, in delivery order.
    outstanding: BTreeSet<u64>,
    /// Handled, not yet acknowledged.
    finished: BTreeSet<u64>,
}

impl PendingAcks {
    fn delivered(&mut self, tag: u64) {
        self.outstanding.insert(tag);
    }

    fn finished(&mut self, tag: u64) {
        if self.outstanding.contains(&tag) {
            self.finished.insert(tag);
        }
    }

    fn settled_otherwise(&mut self, tag: u64) {
        self.outstanding.remove(&tag);
        self.finished.remove(&tag);
    }

    /// The acks to send now, as `(tag, multiple)`: one multiple ack for the longest run of
    /// finished deliveries at the front (no unsettled delivery before it, so the broker's
    /// "every unacked tag up to this one" means exactly them), then each other finished one.
    fn take(&mut self) -> Vec<(u64, bool)> {
        let mut acks = Vec::new();
        let mut front = None;
        while let Some(&first) = self.outstanding.first() {
            if !self.finished.remove(&first) {
                break;
            }
            self.outstanding.pop_first();
            front = Some(first);
        }
        if let Some(last) = front {
            acks.push((last, true));
        }
        for tag in std::mem::take(&mut self.finished) {
            self.outstanding.remove(&tag);
            acks.push((tag, false));
        }
        acks
    }
}

/// Aborts the inner handler task if the message task is abandoned.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the handler for one delivery and settles it on the channel it came from.
async fn process(
    message: ConsumerMessage,
    tag: u64,
    channel: Channel,
    broker: Broker,
    queues: QueueSet,
    handler: Arc<dyn Handler>,
) -> Settled {
    let queue = queues.work.as_str();
    let (Some(deliver), Some(properties), Some(body)) =
        (message.deliver, message.basic_properties, message.content)
    else {
        tracing::error!(queue, "incomplete delivery from amqprs; dead-lettering it");
        if let Err(error) = channel
            .basic_reject(BasicRejectArguments::new(tag, false))
            .await
        {
            tracing::warn!(queue, %error, "rejecting an incomplete delivery failed");
        }
        return Settled::Done(tag);
    };
    let headers = properties.headers();
    let delivery = Delivery {
        body,
        message_id: properties.message_id().cloned(),
        redelivered: deliver.redelivered(),
        delivery_count: headers.and_then(|h| header_i64(h, "x-delivery-count")),
        retry_count: headers
            .and_then(|h| header_i64(h, RETRY_COUNT_HEADER))
            .and_then(|count| u32::try_from(count).ok())
            .unwrap_or(0),
    };
    let message_id = delivery.message_id.clone().unwrap_or_default();
    let retry_body = delivery.body.clone();
    let retry_count = delivery.retry_count;

    metrics::counter!("messaging_consumed_total", "queue" => queue.to_owned()).increment(1);
    let in_flight = metrics::gauge!("messaging_in_flight", "queue" => queue.to_owned());
    in_flight.increment(1.0);
    let started = Instant::now();
    // Its own task, so a panicking handler is contained and its message returned.
    let mut task = AbortOnDrop(tokio::spawn(async move { handler.handle(delivery).await }));
    let outcome = (&mut task.0).await;
    in_flight.decrement(1.0);

    let label = match &outcome {
        Ok(Outcome::Ack) => "ack",
        Ok(Outcome::Retry(_)) => "retry",
        Ok(Outcome::DeadLetter(_)) => "dead_letter",
        Err(_) => "panic",
    };
    metrics::histogram!("messaging_handler_duration_seconds", "queue" => queue.to_owned(), "outcome" => label)
        .record(started.elapsed().as_secs_f64());

    let returned = match outcome {
        Ok(Outcome::Ack) => {
            metrics::counter!("messaging_acked_total", "queue" => queue.to_owned()).increment(1);
            return Settled::Ack(tag);
        }
        Ok(Outcome::Retry(delay)) => {
            match broker
                .publish_retry_counted(&queues, &retry_body, &message_id, delay, retry_count + 1)
                .await
            {
                Ok(()) => {
                    tracing::info!(queue, %message_id, ?delay, retry = retry_count + 1, "retry scheduled");
                    metrics::counter!("messaging_retried_total", "queue" => queue.to_owned())
                        .increment(1);
                    return Settled::Ack(tag);
                }
                Err(error) => {
                    // Back at once instead; x-delivery-limit bounds this path.
                    tracing::warn!(queue, %message_id, %error, "cannot schedule retry; requeueing");
                    metrics::counter!("messaging_requeued_total", "queue" => queue.to_owned())
                        .increment(1);
                    channel
                        .basic_nack(BasicNackArguments::new(tag, false, true))
                        .await
                }
            }
        }
        Ok(Outcome::DeadLetter(reason)) => {
            tracing::warn!(queue, %message_id, %reason, "dead-lettering message");
            metrics::counter!("messaging_dead_lettered_total", "queue" => queue.to_owned())
                .increment(1);
            channel
                .basic_reject(BasicRejectArguments::new(tag, false))
                .await
        }
        Err(error) => {
            tracing::error!(queue, %message_id, %error, "handler panicked; requeueing");
            metrics::counter!("messaging_requeued_total", "queue" => queue.to_owned()).increment(1);
            channel
                .basic_nack(BasicNackArguments::new(tag, false, true))
                .await
        }
    };
    if let Err(error) = returned {
        // The channel is gone; the broker redelivers the message to the next consumer.
        tracing::warn!(queue, %message_id, %error, "settling the delivery failed");
    }
    Settled::Done(tag)
}

fn header_i64(headers: &FieldTable, name: &str) -> Option<i64> {
    let key = name.try_into().ok()?;
    match headers.get(&key)? {
        FieldValue::b(v) => Some(i64::from(*v)),
        FieldValue::B(v) => Some(i64::from(*v)),
        FieldValue::s(v) => Some(i64::from(*v)),
        FieldValue::u(v) => Some(i64::from(*v)),
        FieldValue::I(v) => Some(i64::from(*v)),
        FieldValue::i(v) => Some(i64::from(*v)),
        FieldValue::l(v) => Some(*v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(tags: std::ops::RangeInclusive<u64>) -> PendingAcks {
        let mut acks = PendingAcks::default();
        tags.for_each(|tag| acks.delivered(tag));
        acks
    }

    #[test]
    fn deliveries_finished_together_at_the_front_take_one_multiple_ack() {
        let mut acks = pending(1..=5);
        for tag in [3, 1, 2] {
            acks.finished(tag);
        }
        assert_eq!(acks.take(), vec![(3, true)]);
        assert_eq!(acks.take(), vec![], "nothing is acked twice");
        acks.finished(5);
        acks.finished(4);
        assert_eq!(acks.take(), vec![(5, true)]);
        assert!(acks.outstanding.is_empty());
    }

    #[test]
    fn a_running_delivery_is_never_covered_and_later_ones_are_acked_alone() {
        let mut acks = pending(1..=6);
        acks.finished(1);
        acks.finished(4);
        acks.finished(6);
        // 2 still runs: the multiple ack stops at 1; 4 and 6 go one by one, not held back.
        assert_eq!(acks.take(), vec![(1, true), (4, false), (6, false)]);
        acks.finished(2);
        acks.finished(3);
        // 5 still runs, and 4 is acked already: 2 and 3 form the new front.
        assert_eq!(acks.take(), vec![(3, true)]);
        assert_eq!(
            acks.outstanding.iter().copied().collect::<Vec<_>>(),
            vec![5]
        );
    }

    #[test]
    fn rejected_or_requeued_deliveries_leave_the_front_without_an_ack() {
        let mut acks = pending(1..=4);
        acks.settled_otherwise(1);
        acks.finished(2);
        acks.settled_otherwise(3);
        acks.finished(4);
        assert_eq!(acks.take(), vec![(4, true)]);
        assert!(acks.outstanding.is_empty());
    }

    #[test]
    fn an_unknown_or_dead_task_is_never_acked() {
        let mut acks = pending(1..=3);
        // A tag never delivered on this channel (e.g. one from before a reconnect).
        acks.finished(9);
        // 1's task died: it stays outstanding, so nothing after it may be acked as multiple.
        acks.finished(2);
        acks.finished(3);
        assert_eq!(acks.take(), vec![(2, false), (3, false)]);
        assert_eq!(
            acks.outstanding.iter().copied().collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn integer_headers_of_any_width_are_read() {
        let mut headers = FieldTable::new();
        let key = |k: &str| k.try_into().expect("short key");
        headers.insert(key("x-delivery-count"), FieldValue::l(3));
        headers.insert(key("x-retry-count"), FieldValue::I(2));
        headers.insert(key("x-text"), FieldValue::from("7"));
        assert_eq!(header_i64(&headers, "x-delivery-count"), Some(3));
        assert_eq!(header_i64(&headers, "x-retry-count"), Some(2));
        assert_eq!(header_i64(&headers, "x-text"), None);
        assert_eq!(header_i64(&headers, "missing"), None);
    }
}
