//! RabbitMQ for the whole platform: the queue topology, publishing with confirms, and the
//! consumer loop that acks only after its handler has committed.
//!
//! Queue names given to [`Broker::publish_json`], [`Broker::publish_retry`] and [`consume`]
//! may be the logical names ([`MODEL_INVOCATION_QUEUE`], [`BILLING_LOG_QUEUE`]) or the
//! prefixed names from [`Broker::queue_names`]; both resolve to the broker's prefixed queues.

mod broker;
mod confirms;
mod consumer;
mod error;
mod settings;
pub mod topology;

pub use amqprs::channel::Channel;
pub use broker::Broker;
pub use consumer::{Consumer, ConsumerStatus, Delivery, Handler, Outcome, consume};
pub use error::MessagingError;
pub use settings::BrokerSettings;
pub use topology::{
    BILLING_LOG_QUEUE, MODEL_INVOCATION_QUEUE, QueueNames, QueueSet, declare_topology,
    delete_topology, queue_names,
};
