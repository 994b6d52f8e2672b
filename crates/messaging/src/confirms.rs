//! Publisher-confirm bookkeeping: matches the broker's acks/nacks/returns to waiting publishes,
//! plus the amqprs callbacks that log broker-initiated closes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::Channel;
use amqprs::connection::Connection;
use amqprs::{Ack, BasicProperties, Cancel, Close, CloseChannel, Nack, Return};
use tokio::sync::oneshot;

type AmqpResult<T> = Result<T, amqprs::error::Error>;

/// What the broker said about one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirm {
    Ack,
    Nack,
    /// `mandatory` publish that matched no queue (the broker still acks it afterwards).
    Returned,
}

struct Waiting {
    message_id: String,
    reply: oneshot::Sender<Confirm>,
}

#[derive(Default)]
struct State {
    /// Delivery tag the broker will give the next publish on this channel (starts at 1).
    next_tag: u64,
    waiting: BTreeMap<u64, Waiting>,
    /// Message ids returned as unroutable whose ack has not arrived yet.
    returned: HashMap<String, usize>,
}

/// Confirm tracking of one confirm-mode channel; shared by the publisher and its callback.
#[derive(Clone, Default)]
pub(crate) struct Confirms(Arc<Mutex<State>>);

impl Confirms {
    pub(crate) fn new() -> Self {
        let confirms = Self::default();
        confirms.state().next_tag = 1;
        confirms
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Critical sections only move map entries; a poisoned lock still holds valid maps.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers the next publish on the channel. Call it under the publish lock, right
    /// before `basic_publish`, so tags follow the order frames reach the broker.
    pub(crate) fn register(&self, message_id: &str) -> (u64, oneshot::Receiver<Confirm>) {
        let (reply, receiver) = oneshot::channel();
        let mut state = self.state();
        let tag = state.next_tag;
        state.next_tag += 1;
        state.waiting.insert(
            tag,
            Waiting {
                message_id: message_id.to_owned(),
                reply,
            },
        );
        (tag, receiver)
    }

    /// Undoes `register` when the publish frame was never sent (still under the lock).
    pub(crate) fn unregister(&self, tag: u64) {
        let mut state = self.state();
        state.waiting.remove(&tag);
        if state.next_tag == tag + 1 {
            state.next_tag = tag;
        }
    }

    fn settle(&self, tag: u64, multiple: bool, acked: bool) {
        let mut state = self.state();
        let tags: Vec<u64> = if multiple {
            state.waiting.range(..=tag).map(|(t, _)| *t).collect()
        } else {
            vec![tag]
        };
        for tag in tags {
            let Some(waiting) = state.waiting.remove(&tag) else {
                continue;
            };
            let confirm = if !acked {
                Confirm::Nack
            } else if take_returned(&mut state.returned, &waiting.message_id) {
                Confirm::Returned
            } else {
                Confirm::Ack
            };
            // The publisher may have timed out and gone; nothing to tell then.
            let _ = waiting.reply.send(confirm);
        }
    }

    fn mark_returned(&self, message_id: String) {
        *self.state().returned.entry(message_id).or_default() += 1;
    }

    /// Connection lost: every waiting publish learns its fate is unknown (receiver errors).
    pub(crate) fn fail_all(&self) {
        let mut state = self.state();
        state.waiting.clear();
        state.returned.clear();
    }
}

fn take_returned(returned: &mut HashMap<String, usize>, message_id: &str) -> bool {
    match returned.get_mut(message_id) {
        Some(count) if *count > 1 => {
            *count -= 1;
            true
        }
        Some(_) => {
            returned.remove(message_id);
            true
        }
        None => false,
    }
}

/// Channel callback of the publisher channel: feeds acks, nacks and returns to [`Confirms`].
pub(crate) struct PublisherCallback {
    pub(crate) confirms: Confirms,
}

#[async_trait::async_trait]
impl ChannelCallback for PublisherCallback {
    async fn close(&mut self, channel: &Channel, close: CloseChannel) -> AmqpResult<()> {
        tracing::warn!(%channel, %close, "broker closed the publisher channel");
        self.confirms.fail_all();
        Ok(())
    }

    async fn cancel(&mut self, _channel: &Channel, _cancel: Cancel) -> AmqpResult<()> {
        Ok(())
    }

    async fn flow(&mut self, channel: &Channel, active: bool) -> AmqpResult<bool> {
        tracing::warn!(%channel, active, "broker flow control on the publisher channel");
        Ok(true)
    }

    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        self.confirms
            .settle(ack.delivery_tag(), ack.mutiple(), true);
    }

    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        self.confirms
            .settle(nack.delivery_tag(), nack.multiple(), false);
    }

    async fn publish_return(
        &mut self,
        _channel: &Channel,
        ret: Return,
        basic_properties: BasicProperties,
        _content: Vec<u8>,
    ) {
        // A return always precedes the ack of the same publish on the channel.
        let message_id = basic_properties.message_id().cloned().unwrap_or_default();
        tracing::error!(%ret, %message_id, "broker returned an unroutable message");
        self.confirms.mark_returned(message_id);
    }
}

/// Channel callback of consumer channels: logs broker-initiated closes and cancels (the
/// consumer loop notices them through its delivery stream ending).
pub(crate) struct ConsumerCallback {
    pub(crate) queue: String,
}

#[async_trait::async_trait]
impl ChannelCallback for ConsumerCallback {
    async fn close(&mut self, channel: &Channel, close: CloseChannel) -> AmqpResult<()> {
        tracing::warn!(queue = %self.queue, %channel, %close, "broker closed the consumer channel");
        Ok(())
    }

    async fn cancel(&mut self, channel: &Channel, cancel: Cancel) -> AmqpResult<()> {
        tracing::warn!(
            queue = %self.queue,
            %channel,
            consumer_tag = %cancel.consumer_tag(),
            "broker cancelled the consumer (queue deleted?)"
        );
        Ok(())
    }

    async fn flow(&mut self, _channel: &Channel, _active: bool) -> AmqpResult<bool> {
        Ok(true)
    }

    async fn publish_ack(&mut self, _channel: &Channel, _ack: Ack) {}

    async fn publish_nack(&mut self, _channel: &Channel, _nack: Nack) {}

    async fn publish_return(
        &mut self,
        _channel: &Channel,
        _ret: Return,
        _basic_properties: BasicProperties,
        _content: Vec<u8>,
    ) {
    }
}

/// Connection callback: logs, and lets the reconnect task notice the connection ending.
pub(crate) struct ConnectionEvents;

#[async_trait::async_trait]
impl ConnectionCallback for ConnectionEvents {
    async fn close(&mut self, connection: &Connection, close: Close) -> AmqpResult<()> {
        tracing::warn!(%connection, %close, "broker closed the connection");
        Ok(())
    }

    async fn blocked(&mut self, connection: &Connection, reason: String) {
        // Publishes now stall until unblocked; they fail by their confirm timeout.
        tracing::warn!(%connection, %reason, "broker blocked publishing (resource alarm)");
    }

    async fn unblocked(&mut self, connection: &Connection) {
        tracing::info!(%connection, "broker unblocked publishing");
    }

    async fn secret_updated(&mut self, _connection: &Connection) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_resolve_single_and_multiple_tags() {
        let confirms = Confirms::new();
        let (t1, r1) = confirms.register("a");
        let (t2, r2) = confirms.register("b");
        let (t3, mut r3) = confirms.register("c");
        assert_eq!((t1, t2, t3), (1, 2, 3));
        confirms.settle(2, true, true);
        assert_eq!(r1.blocking_recv().ok(), Some(Confirm::Ack));
        assert_eq!(r2.blocking_recv().ok(), Some(Confirm::Ack));
        assert!(r3.try_recv().is_err(), "tag 3 still waiting");
        confirms.settle(3, false, false);
        assert_eq!(r3.blocking_recv().ok(), Some(Confirm::Nack));
    }

    #[test]
    fn a_returned_message_is_reported_when_its_ack_arrives() {
        let confirms = Confirms::new();
        let (tag, receiver) = confirms.register("lost");
        confirms.mark_returned("lost".to_owned());
        confirms.settle(tag, false, true);
        assert_eq!(receiver.blocking_recv().ok(), Some(Confirm::Returned));
    }

    #[test]
    fn unregister_reuses_the_tag_and_fail_all_drops_waiters() {
        let confirms = Confirms::new();
        let (tag, _receiver) = confirms.register("x");
        confirms.unregister(tag);
        let (again, receiver) = confirms.register("y");
        assert_eq!(again, tag);
        confirms.fail_all();
        assert!(receiver.blocking_recv().is_err());
    }
}
