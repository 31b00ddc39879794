//! A consumer-group member on Kafka: an rdkafka `StreamConsumer` with the cooperative-sticky
//! assignor, manual commits and rebalance events turned into [`Poll::Rebalance`].
//!
//! librdkafka runs rebalance callbacks while the consumer is polled; the context queues them and
//! [`Subscription::poll`] reports them before any record of a newly assigned partition (records
//! fetched in the same call are held back until the event was returned). Commits are synchronous
//! (they return once the group coordinator stored them) and fenced locally: a partition this member
//! no longer owns is refused with `NotAssigned`, as on the embedded backend. Offsets passed to
//! [`Subscription::store`] go to librdkafka's offset store and are committed synchronously just
//! before a revocation (`pre_rebalance`), so work that finished between two commits is kept.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use conveyor_core::{
    CommitOffset, ConsumedRecord, Error, Headers, Poll, Result, Subscription, TopicPartition,
};
use futures_util::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers as _, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// Queues rebalance events for the subscription.
#[derive(Debug, Default)]
pub(crate) struct GroupContext {
    events: Mutex<VecDeque<(Vec<TopicPartition>, Vec<TopicPartition>)>>,
}

fn tps(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    /// Before partitions are taken away, commit what finished on them (the offsets the runtime
    /// stored with [`Subscription::store`]), so the next owner does not repeat it.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => tracing::debug!(
                    partitions = list.count(),
                    "committed stored offsets before revocation"
                ),
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot commit stored offsets before revocation; the next owner repeats that work")
                }
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let event = match rebalance {
            Rebalance::Assign(list) => (Vec::new(), tps(list)),
            Rebalance::Revoke(list) => (tps(list), Vec::new()),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
                return;
            }
        };
        self.events.lock().expect("events lock").push_back(event);
    }
}

/// One member of a Kafka consumer group.
pub(crate) struct KafkaSubscription {
    pub(crate) consumer: Arc<StreamConsumer<GroupContext>>,
    pub(crate) group: String,
    pub(crate) assignment: BTreeSet<TopicPartition>,
    pub(crate) held: Vec<ConsumedRecord>,
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("group", &self.group)
            .field("assignment", &self.assignment)
            .finish_non_exhaustive()
    }
}

/// Copies a borrowed message into an owned record (the borrow must not outlive the poll).
pub(crate) fn to_record(m: &BorrowedMessage<'_>) -> ConsumedRecord {
    let mut headers = Headers::new();
    if let Some(h) = m.headers() {
        for i in 0..h.count() {
            let header = h.get(i);
            headers.append(
                header.key,
                Bytes::copy_from_slice(header.value.unwrap_or_default()),
            );
        }
    }
    ConsumedRecord {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis().unwrap_or(0),
        key: m.key().map(Bytes::copy_from_slice),
        value: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
        headers,
    }
}

impl KafkaSubscription {
    fn next_event(&mut self) -> Option<Poll> {
        let (revoked, assigned) = self
            .consumer
            .context()
            .events
            .lock()
            .expect("events lock")
            .pop_front()?;
        for tp in &revoked {
            self.assignment.remove(tp);
        }
        // records fetched before a revocation must not be handed out after it
        self.held.retain(|r| {
            !revoked
                .iter()
                .any(|tp| tp.topic == r.topic && tp.partition == r.partition)
        });
        self.assignment.extend(assigned.iter().cloned());
        Some(Poll::Rebalance { revoked, assigned })
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Poll> {
        if let Some(e) = self.next_event() {
            return Ok(e);
        }
        if !self.held.is_empty() {
            let n = max.max(1).min(self.held.len());
            return Ok(Poll::Records(self.held.drain(..n).collect()));
        }
        let first = match tokio::time::timeout(timeout, self.consumer.recv()).await {
            Err(_) => return Ok(self.next_event().unwrap_or(Poll::Idle)),
            Ok(Err(e)) => return Err(crate::broker(e)),
            Ok(Ok(m)) => to_record(&m),
        };
        let mut records = vec![first];
        while records.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => records.push(to_record(&m)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                None => break,
            }
        }
        if let Some(e) = self.next_event() {
            self.held = records;
            self.held.retain(|r| {
                self.assignment
                    .contains(&TopicPartition::new(r.topic.clone(), r.partition))
            });
            return Ok(e);
        }
        Ok(Poll::Records(records))
    }

    async fn commit(&mut self, offsets: &[CommitOffset]) -> Result<()> {
        let mut list = TopicPartitionList::new();
        let mut refused = None;
        for c in offsets {
            if self.assignment.contains(&c.tp) {
                list.add_partition_offset(
                    &c.tp.topic,
                    c.tp.partition,
                    Offset::Offset(c.next_offset),
                )
                .map_err(crate::broker)?;
            } else if refused.is_none() {
                refused = Some(c.tp.clone());
            }
        }
        if list.count() > 0 {
            let consumer = Arc::clone(&self.consumer);
            tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
                .await
                .map_err(|e| Error::Broker(e.to_string()))?
                .map_err(crate::broker)?;
        }
        match refused {
            Some(tp) => Err(Error::NotAssigned {
                topic: tp.topic,
                partition: tp.partition,
            }),
            None => Ok(()),
        }
    }

    fn store(&mut self, offsets: &[CommitOffset]) -> Result<()> {
        let mut list = TopicPartitionList::new();
        for c in offsets.iter().filter(|c| self.assignment.contains(&c.tp)) {
            list.add_partition_offset(&c.tp.topic, c.tp.partition, Offset::Offset(c.next_offset))
                .map_err(crate::broker)?;
        }
        if list.count() > 0 {
            self.consumer.store_offsets(&list).map_err(crate::broker)?;
        }
        Ok(())
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.assignment.iter().cloned().collect()
    }

    fn group(&self) -> &str {
        &self.group
    }
}
