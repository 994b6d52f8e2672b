//! The messaging error: connection, topology and publish failures.

#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    #[error("invalid broker url {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot connect to RabbitMQ at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The connection is down (broker restarting); the reconnect task is working on it.
    #[error("not connected to RabbitMQ")]
    NotConnected,
    #[error("unknown queue {0:?}")]
    UnknownQueue(String),
    #[error("declaring the queue topology failed: {0}")]
    Topology(String),
    #[error("AMQP error: {0}")]
    Amqp(#[from] amqprs::error::Error),
    #[error("publish of message {message_id} to {queue} not confirmed within {timeout_ms} ms")]
    ConfirmTimeout {
        queue: String,
        message_id: String,
        timeout_ms: u64,
    },
    #[error("RabbitMQ refused (nacked) message {message_id} for {queue}")]
    Nacked { queue: String, message_id: String },
    #[error("message {message_id} could not be routed to {queue} (queue missing?)")]
    Unroutable { queue: String, message_id: String },
    #[error("connection lost before message {message_id} for {queue} was confirmed")]
    ConfirmLost { queue: String, message_id: String },
}
