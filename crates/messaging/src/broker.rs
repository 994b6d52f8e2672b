//! The RabbitMQ connection: opened once, watched, and re-opened with backoff after a broker
//! restart; publishing with publisher confirms on a shared confirm-mode channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amqprs::channel::{
    BasicPublishArguments, Channel, ConfirmSelectArguments, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{BasicProperties, DELIVERY_MODE_PERSISTENT, FieldTable, FieldValue};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::confirms::{Confirm, Confirms, ConnectionEvents, ConsumerCallback, PublisherCallback};
use crate::topology::{QueueNames, QueueSet, declare_topology, queue_names};
use crate::{BrokerSettings, MessagingError};

/// Opening a connection (TCP, AMQP handshake, topology, channels) longer than this fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Closing handshake with a broker that may be unreachable gives up after this.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_BACKOFF_START: Duration = Duration::from_millis(200);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often the watcher double-checks that the connection and channel are open.
const HEALTH_POLL: Duration = Duration::from_millis(250);

/// Header counting how many times a message went through its retry queue.
pub(crate) const RETRY_COUNT_HEADER: &str = "x-retry-count";

/// A handle to the broker: cheap to clone, shared by publishers and consumers.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
    supervisor: Arc<AbortOnDrop>,
}

struct Inner {
    settings: BrokerSettings,
    names: QueueNames,
    connect_args: OpenConnectionArguments,
    /// `None` while disconnected; consumers wait on it to re-subscribe.
    session: watch::Sender<Option<Arc<Session>>>,
    closing: AtomicBool,
}

/// One live connection with its publisher channel.
pub(crate) struct Session {
    pub(crate) connection: Connection,
    publisher: Channel,
    /// Serialises "take the next delivery tag + send the frame" so tags match frame order.
    publish_lock: Mutex<()>,
    confirms: Confirms,
}

impl Session {
    fn is_open(&self) -> bool {
        self.connection.is_open() && self.publisher.is_open()
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Broker {
    /// Connects, declares the topology and starts the task that reconnects after failures.
    /// Fails when RabbitMQ cannot be reached now.
    pub async fn connect(settings: BrokerSettings) -> Result<Broker, MessagingError> {
        let connect_args = connection_arguments(&settings)?;
        let names = queue_names(&settings.queue_prefix);
        let session = open_session(&connect_args, &names, &settings).await?;
        tracing::info!(url = %settings.redacted_url(), prefix = %names.prefix, "connected to RabbitMQ");
        metrics::gauge!("messaging_broker_connected").set(1.0);
        let (session, _) = watch::channel(Some(Arc::new(session)));
        let inner = Arc::new(Inner {
            settings,
            names,
            connect_args,
            session,
            closing: AtomicBool::new(false),
        });
        let supervisor = tokio::spawn(supervise(Arc::clone(&inner)));
        Ok(Broker {
            inner,
            supervisor: Arc::new(AbortOnDrop(supervisor)),
        })
    }

    pub fn settings(&self) -> &BrokerSettings {
        &self.inner.settings
    }

    pub fn queue_names(&self) -> &QueueNames {
        &self.inner.names
    }

    /// For readiness: the connection and its publisher channel are open.
    pub fn is_connected(&self) -> bool {
        self.inner
            .session
            .borrow()
            .as_ref()
            .is_some_and(|session| session.is_open())
    }

    /// Publishes a persistent JSON message to a work queue and waits for the broker's
    /// confirm. Fails fast while disconnected; a nack, an unroutable message or no confirm
    /// within `publish_confirm_timeout_ms` is an error (the message may or may not be
    /// queued, so the caller keeps it and publishes again later with the same id).
    pub async fn publish_json(
        &self,
        queue: &str,
        body: &[u8],
        message_id: &str,
    ) -> Result<(), MessagingError> {
        let set = self.resolve(queue)?;
        self.publish(&set.work, body, message_id, None, None).await
    }

    /// Publishes to the work queue's retry queue; the message reaches the work queue again
    /// once `delay` has passed (see `topology`).
    pub async fn publish_retry(
        &self,
        queue: &str,
        body: &[u8],
        message_id: &str,
        delay: Duration,
    ) -> Result<(), MessagingError> {
        let set = self.resolve(queue)?;
        self.publish(&set.retry, body, message_id, Some(delay), None)
            .await
    }

    pub(crate) async fn publish_retry_counted(
        &self,
        set: &QueueSet,
        body: &[u8],
        message_id: &str,
        delay: Duration,
        retry_count: u32,
    ) -> Result<(), MessagingError> {
        self.publish(&set.retry, body, message_id, Some(delay), Some(retry_count))
            .await
    }

    /// Opens a fresh channel on the current connection (inspection, tests, tooling).
    pub async fn open_channel(&self) -> Result<Channel, MessagingError> {
        let session = self.current().ok_or(MessagingError::NotConnected)?;
        let channel = session.connection.open_channel(None).await?;
        channel
            .register_callback(ConsumerCallback {
                queue: String::from("(tooling)"),
            })
            .await?;
        Ok(channel)
    }

    /// Messages waiting to be delivered (ready) in a work queue and in its retry queue: a
    /// passive declare of each, on a channel of its own. Messages delivered but not yet acked
    /// are not counted.
    pub async fn waiting(&self, queue: &str) -> Result<u64, MessagingError> {
        let set = self.resolve(queue)?;
        let channel = self.open_channel().await?;
        let mut waiting = 0;
        for name in [&set.work, &set.retry] {
            let declared = channel
                .queue_declare(QueueDeclareArguments::new(name).passive(true).finish())
                .await;
            match declared {
                Ok(Some((_, ready, _))) => waiting += u64::from(ready),
                Ok(None) => {}
                Err(error) => {
                    // A failed passive declare closes the channel already.
                    return Err(error.into());
                }
            }
        }
        let _ = channel.close().await;
        Ok(waiting)
    }

    /// Drops the current connection; the supervisor opens a new one (with backoff) and
    /// consumers re-subscribe. Publishes in between fail fast with `NotConnected`.
    pub async fn reconnect(&self) {
        let current = self.inner.session.borrow().clone();
        if let Some(session) = current {
            tracing::info!("closing the RabbitMQ connection to reconnect");
            let closing = session.connection.clone().close();
            if let Ok(Err(error)) = tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
                tracing::debug!(%error, "closing the RabbitMQ connection");
            }
        }
    }

    /// Stops reconnecting and closes the connection. Consumers should have stopped first.
    pub async fn close(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.supervisor.0.abort();
        let session = self.inner.session.send_replace(None);
        metrics::gauge!("messaging_broker_connected").set(0.0);
        if let Some(session) = session {
            session.confirms.fail_all();
            let closing = session.connection.clone().close();
            match tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "closing the RabbitMQ connection"),
                Err(_) => tracing::warn!("closing the RabbitMQ connection timed out"),
            }
        }
    }

    pub(crate) fn resolve(&self, queue: &str) -> Result<&QueueSet, MessagingError> {
        self.inner
            .names
            .resolve(queue)
            .ok_or_else(|| MessagingError::UnknownQueue(queue.to_owned()))
    }

    pub(crate) fn current(&self) -> Option<Arc<Session>> {
        self.inner
            .session
            .borrow()
            .as_ref()
            .filter(|session| session.is_open())
            .cloned()
    }

    /// Waits until a session is available (returns at once when connected).
    pub(crate) async fn next_session(&self) -> Arc<Session> {
        let mut receiver = self.inner.session.subscribe();
        loop {
            if let Some(session) = self.current() {
                return session;
            }
            if receiver.changed().await.is_err() {
                // The sender lives in `inner`, which we hold: unreachable, but never spin.
                std::future::pending::<()>().await;
            }
        }
    }

    async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
        expiration: Option<Duration>,
        retry_count: Option<u32>,
    ) -> Result<(), MessagingError> {
        let started = Instant::now();
        let result = self
            .publish_confirmed(routing_key, body, message_id, expiration, retry_count)
            .await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("messaging_published_total", "queue" => routing_key.to_owned(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("messaging_publish_duration_seconds", "queue" => routing_key.to_owned())
            .record(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            tracing::warn!(queue = routing_key, message_id, %error, "publish failed");
        }
        result
    }

    async fn publish_confirmed(
        &self,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
        expiration: Option<Duration>,
        retry_count: Option<u32>,
    ) -> Result<(), MessagingError> {
        let session = self.current().ok_or(MessagingError::NotConnected)?;
        let mut properties = BasicProperties::default();
        properties
            .with_content_type("application/json")
            .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
            .with_message_id(message_id);
        if let Some(delay) = expiration {
            // Milliseconds as a decimal string, per the AMQP `expiration` property.
            properties.with_expiration(&delay.as_millis().to_string());
        }
        if let Some(count) = retry_count {
            let mut headers = FieldTable::new();
            let key = RETRY_COUNT_HEADER
                .try_into()
                .map_err(|_| MessagingError::Topology(RETRY_COUNT_HEADER.to_owned()))?;
            headers.insert(key, FieldValue::l(i64::from(count)));
            properties.with_headers(headers);
        }
        // `mandatory`: a message that matches no queue comes back instead of vanishing.
        let args = BasicPublishArguments::new("", routing_key)
            .mandatory(true)
            .finish();

        let timeout_ms = self.inner.settings.publish_confirm_timeout_ms;
        let owned_id = message_id.to_owned();
        let content = body.to_vec();
        // Spawned, so a caller that gives up mid-send cannot leave tags out of step.
        let send = tokio::spawn(async move {
            let _serialised = session.publish_lock.lock().await;
            let (tag, confirm) = session.confirms.register(&owned_id);
            match session
                .publisher
                .basic_publish(properties, content, args)
                .await
            {
                Ok(()) => Ok(confirm),
                Err(error) => {
                    session.confirms.unregister(tag);
                    Err(MessagingError::from(error))
                }
            }
        });
        let waited = tokio::time::timeout(Duration::from_millis(timeout_ms), async {
            let confirm = send.await.map_err(|_| MessagingError::NotConnected)??;
            Ok::<_, MessagingError>(confirm.await)
        })
        .await;

        let queue = routing_key.to_owned();
        let message_id = message_id.to_owned();
        match waited {
            Err(_elapsed) => Err(MessagingError::ConfirmTimeout {
                queue,
                message_id,
                timeout_ms,
            }),
            Ok(Err(error)) => Err(error),
            Ok(Ok(Err(_dropped))) => Err(MessagingError::ConfirmLost { queue, message_id }),
            Ok(Ok(Ok(Confirm::Ack))) => Ok(()),
            Ok(Ok(Ok(Confirm::Nack))) => Err(MessagingError::Nacked { queue, message_id }),
            Ok(Ok(Ok(Confirm::Returned))) => Err(MessagingError::Unroutable { queue, message_id }),
        }
    }
}

/// Parses the URL; the vhost in `amqp://host/%2f` is percent-decoded (amqprs keeps it raw).
fn connection_arguments(
    settings: &BrokerSettings,
) -> Result<OpenConnectionArguments, MessagingError> {
    let invalid = |reason: String| MessagingError::InvalidUrl {
        url: settings.redacted_url(),
        reason,
    };
    let mut args = OpenConnectionArguments::try_from(settings.url.as_str())
        .map_err(|error| invalid(error.to_string()))?;
    let vhost = percent_decode(args.get_virtual_host())
        .ok_or_else(|| invalid("bad %-escape in vhost".to_owned()))?;
    args.virtual_host(&vhost);
    // Shown by `rabbitmqctl list_connections name`: which process, which test prefix.
    let program = std::env::current_exe()
        .ok()
        .and_then(|path| {
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "ai-gateway".to_owned());
    args.connection_name(&format!(
        "{program}#{}{}",
        std::process::id(),
        if settings.queue_prefix.is_empty() {
            String::new()
        } else {
            format!(" prefix={}", settings.queue_prefix)
        }
    ));
    Ok(args)
}

fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn open_session(
    args: &OpenConnectionArguments,
    names: &QueueNames,
    settings: &BrokerSettings,
) -> Result<Session, MessagingError> {
    let connect_error = |reason: String| MessagingError::Connect {
        url: settings.redacted_url(),
        reason,
    };
    let opening = async {
        let connection = Connection::open(args)
            .await
            .map_err(|error| connect_error(error.to_string()))?;
        connection.register_callback(ConnectionEvents).await?;

        let setup = connection.open_channel(None).await?;
        setup
            .register_callback(ConsumerCallback {
                queue: String::from("(topology)"),
            })
            .await?;
        declare_topology(&setup, names).await?;
        setup.close().await?;

        let publisher = connection.open_channel(None).await?;
        let confirms = Confirms::new();
        publisher
            .register_callback(PublisherCallback {
                confirms: confirms.clone(),
            })
            .await?;
        publisher
            .confirm_select(ConfirmSelectArguments::default())
            .await?;
        Ok(Session {
            connection,
            publisher,
            publish_lock: Mutex::new(()),
            confirms,
        })
    };
    tokio::time::timeout(CONNECT_TIMEOUT, opening)
        .await
        .map_err(|_| connect_error(format!("timed out after {CONNECT_TIMEOUT:?}")))?
}

/// Watches the live session; when it breaks, re-opens one with exponential backoff.
async fn supervise(inner: Arc<Inner>) {
    loop {
        let current = inner.session.borrow().clone();
        if let Some(session) = current {
            wait_until_broken(&session).await;
            if inner.closing.load(Ordering::SeqCst) {
                return;
            }
            tracing::warn!("RabbitMQ connection lost; reconnecting");
            inner.session.send_replace(None);
            session.confirms.fail_all();
            metrics::gauge!("messaging_broker_connected").set(0.0);
        }
        let mut backoff = RECONNECT_BACKOFF_START;
        loop {
            tokio::time::sleep(backoff).await;
            if inner.closing.load(Ordering::SeqCst) {
                return;
            }
            match open_session(&inner.connect_args, &inner.names, &inner.settings).await {
                Ok(session) => {
                    tracing::info!("reconnected to RabbitMQ");
                    metrics::counter!("messaging_broker_reconnects_total").increment(1);
                    metrics::gauge!("messaging_broker_connected").set(1.0);
                    inner.session.send_replace(Some(Arc::new(session)));
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "reconnecting to RabbitMQ failed");
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                }
            }
        }
    }
}

async fn wait_until_broken(session: &Session) {
    let io_failure = session.connection.listen_network_io_failure();
    tokio::pin!(io_failure);
    let mut poll = tokio::time::interval(HEALTH_POLL);
    loop {
        tokio::select! {
            _ = &mut io_failure => return,
            _ = poll.tick() => {
                if !session.is_open() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhost_is_percent_decoded() {
        let args = connection_arguments(&BrokerSettings::new(
            "amqp://guest:guest@localhost:5672/%2f",
        ))
        .expect("valid url");
        assert_eq!(args.get_virtual_host(), "/");
        let args = connection_arguments(&BrokerSettings::new("amqp://localhost/tenant%2Da"))
            .expect("valid url");
        assert_eq!(args.get_virtual_host(), "tenant-a");
        assert_eq!(args.get_port(), 5672);
    }

    #[test]
    fn bad_urls_are_rejected() {
        assert!(connection_arguments(&BrokerSettings::new("http://localhost")).is_err());
        assert!(connection_arguments(&BrokerSettings::new("amqp://localhost/%zz")).is_err());
    }
}
