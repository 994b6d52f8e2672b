//! Against a real RabbitMQ (127.0.0.1:5672 or `AMQP_URL`); every test owns a unique queue
//! prefix and deletes its queues at the end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use amqprs::channel::{BasicGetArguments, Channel, QueueDeclareArguments, QueueDeleteArguments};
use messaging::{
    Broker, BrokerSettings, Consumer, Delivery, Handler, MessagingError, Outcome, declare_topology,
    delete_topology,
};
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(10);

fn settings() -> BrokerSettings {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let mut settings = BrokerSettings::new(url);
    settings.queue_prefix = format!("test_{}_", uuid::Uuid::new_v4().simple());
    settings.prefetch = 4;
    settings
}

async fn connect() -> Broker {
    let settings = settings();
    let url = settings.redacted_url();
    Broker::connect(settings).await.unwrap_or_else(|error| {
        panic!("RabbitMQ must be running at {url} for these tests (CI starts it): {error}")
    })
}

async fn cleanup(broker: &Broker) {
    let channel = broker.open_channel().await.expect("channel for cleanup");
    delete_topology(&channel, broker.queue_names())
        .await
        .expect("delete topology");
    broker.close().await;
}

async fn get(channel: &Channel, queue: &str) -> Option<(amqprs::BasicProperties, Vec<u8>)> {
    let args = BasicGetArguments {
        queue: queue.to_owned(),
        no_ack: true,
    };
    channel
        .basic_get(args)
        .await
        .expect("basic.get")
        .map(|(_, properties, body)| (properties, body))
}

/// Polls `queue` with basic.get until a message arrives or `WAIT` passes.
async fn eventually_get(channel: &Channel, queue: &str) -> (amqprs::BasicProperties, Vec<u8>) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(message) = get(channel, queue).await {
            return message;
        }
        assert!(Instant::now() < deadline, "no message arrived in {queue}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn message_count(channel: &Channel, queue: &str) -> u32 {
    let (_, count, _) = channel
        .queue_declare(QueueDeclareArguments::new(queue).passive(true).finish())
        .await
        .expect("passive declare")
        .expect("declare-ok");
    count
}

type Policy = Box<dyn Fn(usize) -> Outcome + Send + Sync>;

/// Reports every delivery, optionally works for a while, then answers by call number.
struct Scripted {
    calls: AtomicUsize,
    finished: Arc<AtomicUsize>,
    seen: mpsc::UnboundedSender<(Instant, Delivery)>,
    work: Duration,
    policy: Policy,
}

impl Scripted {
    fn new(
        work: Duration,
        policy: impl Fn(usize) -> Outcome + Send + Sync + 'static,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<(Instant, Delivery)>) {
        let (seen, receiver) = mpsc::unbounded_channel();
        let handler = Arc::new(Self {
            calls: AtomicUsize::new(0),
            finished: Arc::new(AtomicUsize::new(0)),
            seen,
            work,
            policy: Box::new(policy),
        });
        (handler, receiver)
    }
}

impl Handler for Scripted {
    fn handle(&self, delivery: Delivery) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let _ = self.seen.send((Instant::now(), delivery));
            if !self.work.is_zero() {
                tokio::time::sleep(self.work).await;
            }
            let outcome = (self.policy)(call);
            self.finished.fetch_add(1, Ordering::SeqCst);
            outcome
        })
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), MessagingError>>,
}

impl Running {
    async fn stop(self) -> Duration {
        let started = Instant::now();
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("consumer stops in time")
            .expect("consumer task")
            .expect("consumer result");
        started.elapsed()
    }
}

fn start(broker: &Broker, queue: &str, handler: Arc<Scripted>) -> Running {
    let consumer = Consumer::new(broker, queue, 4, handler).expect("consumer");
    let (stop, stopped) = oneshot::channel::<()>();
    Running {
        stop,
        task: tokio::spawn(consumer.run(stopped)),
    }
}

async fn next(seen: &mut mpsc::UnboundedReceiver<(Instant, Delivery)>) -> (Instant, Delivery) {
    tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("a delivery in time")
        .expect("handler alive")
}

async fn nothing_more(seen: &mut mpsc::UnboundedReceiver<(Instant, Delivery)>, wait: Duration) {
    if let Ok(Some((_, extra))) = tokio::time::timeout(wait, seen.recv()).await {
        panic!("unexpected extra delivery: {extra:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_the_topology_twice_is_idempotent() {
    let broker = connect().await;
    let channel = broker.open_channel().await.expect("channel");
    declare_topology(&channel, broker.queue_names())
        .await
        .expect("second declaration");
    declare_topology(&channel, broker.queue_names())
        .await
        .expect("third declaration");
    for set in broker.queue_names().all() {
        for queue in [&set.work, &set.retry, &set.dead_letter] {
            assert_eq!(message_count(&channel, queue).await, 0, "{queue}");
        }
    }
    assert!(broker.is_connected());
    cleanup(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_are_persistent_json_with_their_id() {
    let broker = connect().await;
    broker
        .publish_json("billing_log_queue", br#"{"request_id":"r1"}"#, "r1")
        .await
        .expect("confirmed publish");
    let channel = broker.open_channel().await.expect("channel");
    let queue = &broker.queue_names().billing_log.work;
    let (properties, body) = get(&channel, queue).await.expect("message in queue");
    assert_eq!(body, br#"{"request_id":"r1"}"#);
    assert_eq!(properties.message_id().map(String::as_str), Some("r1"));
    assert_eq!(properties.delivery_mode(), Some(2));
    assert_eq!(
        properties.content_type().map(String::as_str),
        Some("application/json")
    );
    assert!(get(&channel, queue).await.is_none(), "exactly one message");
    cleanup(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_message_is_consumed_once_and_acked() {
    let broker = connect().await;
    broker
        .publish_json("model_invocation_queue", br#"{"job_id":"j1"}"#, "j1")
        .await
        .expect("confirmed publish");
    let (handler, mut seen) = Scripted::new(Duration::ZERO, |_| Outcome::Ack);
    let running = start(&broker, "model_invocation_queue", handler.clone());

    let (_, delivery) = next(&mut seen).await;
    assert_eq!(delivery.body, br#"{"job_id":"j1"}"#);
    assert_eq!(delivery.message_id.as_deref(), Some("j1"));
    assert!(!delivery.redelivered);
    assert_eq!(delivery.retry_count, 0);
    assert!(delivery.delivery_count.unwrap_or(0) == 0, "{delivery:?}");
    nothing_more(&mut seen, Duration::from_millis(500)).await;
    running.stop().await;

    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    let channel = broker.open_channel().await.expect("channel");
    let names = broker.queue_names();
    assert_eq!(
        message_count(&channel, &names.model_invocation.work).await,
        0,
        "acked"
    );
    assert_eq!(
        message_count(&channel, &names.model_invocation.dead_letter).await,
        0
    );
    cleanup(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_publishes_are_each_confirmed() {
    let broker = connect().await;
    let publishes = (0..50).map(|n| {
        let broker = broker.clone();
        tokio::spawn(async move {
            let body = format!(r#"{{"n":{n}}}"#);
            broker
                .publish_json("billing_log_queue", body.as_bytes(), &format!("m{n}"))
                .await
        })
    });
    for publish in publishes.collect::<Vec<_>>() {
        publish.await.expect("task").expect("confirmed");
    }
    let channel = broker.open_channel().await.expect("channel");
    assert_eq!(
        message_count(&channel, &broker.queue_names().billing_log.work).await,
        50
    );
    cleanup(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_moves_the_message_to_the_dlq() {
    let broker = connect().await;
    broker
        .publish_json("billing_log_queue", b"{\"poison\":true}", "p1")
        .await
        .expect("confirmed publish");
    let (handler, mut seen) = Scripted::new(Duration::ZERO, |_| {
        Outcome::DeadLetter("unparseable".into())
    });
    let running = start(&broker, "billing_log_queue", handler.clone());
    next(&mut seen).await;

    let channel = broker.open_channel().await.expect("channel");
    let names = broker.queue_names();
    let (properties, body) = eventually_get(&channel, &names.billing_log.dead_letter).await;
    assert_eq!(body, b"{\"poison\":true}");
    assert_eq!(properties.message_id().map(String::as_str), Some("p1"));
    nothing_more(&mut seen, Duration::from_millis(300)).await;
    running.stop().await;
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    assert_eq!(message_count(&channel, &names.billing_log.work).await, 0);
    cleanup(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_redelivers_after_the_delay_and_not_before() {
    let broker = connect().await;
    broker
        .publish_json("model_invocation_queue", b"{\"job_id\":\"j2\"}", "j2")
        .await
        .expect("confirmed publish");
    let (handler, mut seen) = Scripted::new(Duration::ZERO, |call| {
        if call == 0 {
            Outcome::Retry(Duration::from_millis(200))
        } else {
            Outcome::Ack
        }
    });
    let running = start(&broker, "model_invocation_queue", handler.clone());

    let (first_at, first) = next(&mut seen).await;
    assert_eq!(first.retry_count, 0);
    let (second_at, second) = next(&mut seen).await;
    let gap = second_at.duration_since(first_at);
    assert!(
        gap >= Duration::from_millis(150),
        "redelivered after only {gap:?}"
    );
    assert!(gap < Duration::from_secs(5), "redelivered after {gap:?}");
    assert_eq!(second.body, first.body);
    assert_eq!(second.message_id.as_deref(), Some("j2"));
    assert_eq!(second.retry_count, 1);
    nothing_more(&mut seen, Duration::from_millis(500)).await;
    running.stop().await;

    assert_eq!(handler.calls.load(Ordering::SeqCst), 2);
    let channel = broker.open_channel().await.expect("channel");
    let set = &broker.queue_names().model_invocation;
    assert_eq!(message_count(&channel, &set.work).await, 0);
    assert_eq!(message_count(&channel, &set.retry).await, 0);
    assert_eq!(message_count(&channel, &set.dead_letter).await, 0);
    cleanup(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_in_flight_handler_and_acks_it() {
    let broker = connect().await;
    broker
        .publish_json("billing_log_queue", b"{}", "slow")
        .await
        .expect("confirmed publish");
    let (handler, mut seen) = Scripted::new(Duration::from_millis(800), |_| Outcome::Ack);
    let finished = Arc::clone(&handler.finished);
    let running = start(&broker, "billing_log_queue", handler.clone());
    next(&mut seen).await;
    assert_eq!(finished.load(Ordering::SeqCst), 0, "handler still working");

    let took = running.stop().await;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "stop returned before the handler finished"
    );
    assert!(
        took >= Duration::from_millis(500),
        "stopped after only {took:?}"
    );

    let channel = broker.open_channel().await.expect("channel");
    let set = &broker.queue_names().billing_log;
    assert_eq!(
        message_count(&channel, &set.work).await,
        0,
        "the in-flight message was acked"
    );
    cleanup(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_always_panics_ends_in_the_dlq_at_the_delivery_limit() {
    let broker = connect().await;
    broker
        .publish_json("billing_log_queue", b"{\"crash\":1}", "crash")
        .await
        .expect("confirmed publish");
    let (handler, mut seen) = Scripted::new(Duration::ZERO, |_| panic!("handler bug"));
    let running = start(&broker, "billing_log_queue", handler.clone());

    let channel = broker.open_channel().await.expect("channel");
    let set = &broker.queue_names().billing_log;
    let (_, body) = eventually_get(&channel, &set.dead_letter).await;
    assert_eq!(body, b"{\"crash\":1}");
    running.stop().await;
    let mut deliveries = 0;
    while seen.try_recv().is_ok() {
        deliveries += 1;
    }
    // First delivery plus DELIVERY_LIMIT redeliveries, then the broker dead-letters it.
    assert_eq!(
        deliveries,
        1 + usize::try_from(messaging::topology::DELIVERY_LIMIT).expect("small")
    );
    cleanup(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_missing_queue_is_an_error_not_a_silent_loss() {
    let broker = connect().await;
    let channel = broker.open_channel().await.expect("channel");
    let work = broker.queue_names().billing_log.work.clone();
    channel
        .queue_delete(QueueDeleteArguments::new(&work))
        .await
        .expect("delete work queue");
    let result = broker
        .publish_json("billing_log_queue", b"{}", "orphan")
        .await;
    assert!(
        matches!(result, Err(MessagingError::Unroutable { .. })),
        "{result:?}"
    );
    let unknown = broker.publish_json("no_such_queue", b"{}", "x").await;
    assert!(
        matches!(unknown, Err(MessagingError::UnknownQueue(_))),
        "{unknown:?}"
    );
    // The broker connection survives both.
    assert!(broker.is_connected());
    cleanup(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_connection_publishing_fails_fast_then_recovers_and_consumers_resubscribe() {
    let broker = connect().await;
    let (handler, mut seen) = Scripted::new(Duration::ZERO, |_| Outcome::Ack);
    let consumer = Consumer::new(&broker, "billing_log_queue", 4, handler).expect("consumer");
    let status = consumer.status();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = Running {
        stop,
        task: tokio::spawn(consumer.run(stopped)),
    };
    eventually(|| status.is_running()).await;

    broker.reconnect().await;
    let started = Instant::now();
    let during = broker
        .publish_json("billing_log_queue", b"{}", "during")
        .await;
    assert!(
        matches!(during, Err(MessagingError::NotConnected)),
        "{during:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "failed slowly"
    );
    assert!(!broker.is_connected());

    eventually(|| broker.is_connected() && status.is_running()).await;
    broker
        .publish_json("billing_log_queue", b"{\"after\":1}", "after")
        .await
        .expect("publish after reconnect");
    let (_, delivery) = next(&mut seen).await;
    assert_eq!(delivery.message_id.as_deref(), Some("after"));
    running.stop().await;
    cleanup(&broker).await;
}

async fn eventually(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "condition not reached in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first delivery runs until every other one has finished; one in the middle is
/// dead-lettered; the rest are acked.
struct FirstWaitsForTheRest {
    calls: AtomicUsize,
    finished: AtomicUsize,
    total: usize,
}

impl Handler for FirstWaitsForTheRest {
    fn handle(&self, delivery: Delivery) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if call == 0 {
                let deadline = Instant::now() + WAIT;
                while self.finished.load(Ordering::SeqCst) < self.total - 1
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            self.finished.fetch_add(1, Ordering::SeqCst);
            if delivery.message_id.as_deref() == Some("m5") {
                Outcome::DeadLetter("poison".into())
            } else {
                Outcome::Ack
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_deliveries_behind_a_slow_one_are_not_held_back_and_each_is_acked_once() {
    // Deliveries that finish together are acked by one multiple ack, but never past one that
    // still runs: the acks behind it go one by one. Held back, they would fill the prefetch
    // window (4) and the consumer would stall while the first delivery waits for the rest.
    let broker = connect().await;
    let total = 24;
    for n in 0..total {
        broker
            .publish_json("billing_log_queue", b"{}", &format!("m{n}"))
            .await
            .expect("confirmed publish");
    }
    let handler = Arc::new(FirstWaitsForTheRest {
        calls: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        total,
    });
    let consumer =
        Consumer::new(&broker, "billing_log_queue", 4, handler.clone()).expect("consumer");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(consumer.run(stopped));
    let started = Instant::now();
    eventually(|| handler.finished.load(Ordering::SeqCst) == total).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the first delivery waited for the deadline: the others stalled behind it"
    );

    let channel = broker.open_channel().await.expect("channel");
    let set = &broker.queue_names().billing_log;
    // Acked (not merely in flight): the queue empties while the consumer still runs.
    let deadline = Instant::now() + WAIT;
    while message_count(&channel, &set.work).await > 0 {
        assert!(
            Instant::now() < deadline,
            "some deliveries were never acked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    task.await.expect("consumer task").expect("consumer result");
    assert_eq!(handler.calls.load(Ordering::SeqCst), total, "no redelivery");
    assert_eq!(message_count(&channel, &set.work).await, 0);
    let (_, body) = eventually_get(&channel, &set.dead_letter).await;
    assert_eq!(body, b"{}");
    assert!(get(&channel, &set.dead_letter).await.is_none(), "only m5");
    cleanup(&broker).await;
}
