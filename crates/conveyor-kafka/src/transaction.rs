//! Exactly-once consume-and-emit on Kafka: a group member's transactional producer (EOS v2,
//! KIP-447).
//!
//! Each subscription that asks for it ([`conveyor_core::Subscription::transactional`]) gets its
//! own producer with a unique `transactional.id`, created on first use. One
//! [`TransactionalCommit::publish_and_commit`] is one Kafka transaction: begin, produce the
//! records, `send_offsets_to_transaction` with the consumer's **group metadata** (its generation
//! and member id), commit. The group coordinator refuses offsets from a member of an older
//! generation, so a zombie (a member whose partitions moved while it was stalled) cannot commit,
//! and its records are aborted with the transaction: `read_committed` readers never see them.
//! Every conveyor consumer and reader reads `read_committed` (librdkafka's default, which
//! conveyor does not change).
//!
//! Failures: an abortable error aborts the transaction and is returned (the caller keeps its
//! records and tries again with the next commit); a fatal one (the producer was fenced) drops the
//! producer, so the next call starts a fresh one; a refused generation is `NotAssigned`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use conveyor_core::{CommitOffset, Error, Record, Result, TransactionalCommit};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::consumer::{commit_list, GroupContext, KafkaSubscription};

#[async_trait]
impl TransactionalCommit for KafkaSubscription {
    async fn publish_and_commit(
        &mut self,
        records: Vec<(String, Record)>,
        offsets: &[CommitOffset],
    ) -> Result<()> {
        conveyor_core::backend::check_commit_metadata(offsets)?;
        if let Some(c) = offsets.iter().find(|c| !self.assignment.contains(&c.tp)) {
            return Err(Error::not_assigned(&c.tp));
        }
        let owned: Vec<&CommitOffset> = offsets.iter().collect();
        let list = commit_list(&owned)?;
        let factory = self.tx_factory.clone();
        let group = self.group.clone();
        let existing = self.tx.clone();
        let consumer = Arc::clone(&self.consumer);
        let (producer, result) = tokio::task::spawn_blocking(move || {
            let producer = match existing {
                Some(p) => p,
                None => match factory.create(&group) {
                    Ok(p) => p,
                    Err(e) => return (None, Err(Failure::Fatal(e))),
                },
            };
            let result = run(&producer, &consumer, records, list, factory.timeout);
            (Some(producer), result)
        })
        .await
        .map_err(|e| Error::Broker(e.to_string()))?;
        self.tx = producer;
        match result {
            Ok(()) => Ok(()),
            Err(Failure::Fatal(e)) => {
                // fenced by a newer producer or otherwise unusable: start afresh next time
                self.tx = None;
                Err(e)
            }
            Err(Failure::Refused(e)) => {
                // the whole member was refused (its generation), not one partition: the caller
                // tries again after the rebalance it is about to see
                tracing::info!(error = %e, "the group refused this member's offsets (a rebalance moved on); the transaction was aborted");
                Err(e)
            }
            Err(Failure::Lost(tp)) => Err(Error::not_assigned(&tp)),
            Err(Failure::Aborted(e)) => Err(e),
        }
    }
}

/// Why a transaction did not commit.
enum Failure {
    /// Aborted; the producer can run the next one.
    Aborted(Error),
    /// The group coordinator refused the member (an older generation): aborted.
    Refused(Error),
    /// The consumer no longer owns this partition (revoked while the records were produced):
    /// aborted before its offsets were sent.
    Lost(conveyor_core::TopicPartition),
    /// The producer cannot go on.
    Fatal(Error),
}

/// One transaction, blocking.
fn run(
    p: &ThreadedProducer<DefaultProducerContext>,
    consumer: &StreamConsumer<GroupContext>,
    records: Vec<(String, Record)>,
    offsets: rdkafka::TopicPartitionList,
    timeout: Duration,
) -> std::result::Result<(), Failure> {
    let step = |r: rdkafka::error::KafkaResult<()>| r.map_err(|e| classify(p, e, timeout));
    step(p.begin_transaction())?;
    for (topic, r) in &records {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in r.headers.iter() {
            headers = headers.insert(Header {
                key: k,
                value: Some(&v[..]),
            });
        }
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic)
            .payload(&r.value[..])
            .headers(headers);
        if let Some(k) = &r.key {
            rec = rec.key(&k[..]);
        }
        if let Some(part) = r.partition {
            rec = rec.partition(part);
        }
        if let Some(t) = r.timestamp {
            rec = rec.timestamp(t);
        }
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    let e = crate::broker(e);
                    let _ = p.abort_transaction(timeout);
                    return Err(Failure::Aborted(e));
                }
            }
        }
    }
    // the revocation callback runs inside the consumer's poll, possibly after the caller
    // checked its assignment: check the consumer's own, just before the offsets go
    if let Ok(now) = consumer.assignment() {
        if let Some(e) = offsets
            .elements()
            .iter()
            .find(|e| now.find_partition(e.topic(), e.partition()).is_none())
        {
            let _ = p.abort_transaction(timeout);
            return Err(Failure::Lost(conveyor_core::TopicPartition::new(
                e.topic(),
                e.partition(),
            )));
        }
    }
    let Some(metadata) = consumer.group_metadata() else {
        let _ = p.abort_transaction(timeout);
        return Err(Failure::Aborted(Error::Broker(
            "the consumer has no group metadata yet (it has not joined its group)".into(),
        )));
    };
    step(p.send_offsets_to_transaction(&offsets, &metadata, timeout))?;
    // a retriable failure of the commit leaves its outcome unknown: librdkafka allows calling
    // it again, which finishes the same transaction (giving up and sending the records in a new
    // one could store them twice)
    let mut tries = 0;
    loop {
        match p.commit_transaction(timeout) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(t)) if t.is_retriable() && tries < 5 => {
                tries += 1;
                tracing::warn!(error = %t, "transaction commit not confirmed yet; asking again");
            }
            Err(e) => {
                let failure = classify(p, e, timeout);
                // the commit's outcome may be unknown (no abort possible): the group's
                // offsets tell (a read_committed offset fetch waits for a pending transaction)
                if matches!(failure, Failure::Fatal(_)) && committed_as(consumer, &offsets, timeout)
                {
                    tracing::warn!("the transaction's commit was not confirmed, but its offsets are committed: it committed");
                    return Ok(());
                }
                return Err(failure);
            }
        }
    }
}

/// Whether the group's committed offsets are `offsets`, metadata included (a transaction at an
/// unchanged offset carries new metadata, naming jobs finished past it whose outputs it
/// publishes: the offset alone cannot tell whether it committed).
fn committed_as(
    consumer: &StreamConsumer<GroupContext>,
    offsets: &rdkafka::TopicPartitionList,
    timeout: Duration,
) -> bool {
    let Ok(now) = consumer.committed_offsets(offsets.clone(), timeout) else {
        return false;
    };
    offsets.elements().iter().all(|e| {
        now.find_partition(e.topic(), e.partition())
            .is_some_and(|n| n.offset() == e.offset() && n.metadata() == e.metadata())
    })
}

/// Sorts a failed transaction step, aborting the transaction when it can still be aborted.
fn classify(
    p: &ThreadedProducer<DefaultProducerContext>,
    e: KafkaError,
    timeout: Duration,
) -> Failure {
    let (fatal, refused) = match &e {
        KafkaError::Transaction(t) => (t.is_fatal(), refused(t)),
        _ => (false, false),
    };
    let err = crate::broker(e);
    if fatal {
        return Failure::Fatal(err);
    }
    if let Err(a) = p.abort_transaction(timeout) {
        // e.g. a commit whose outcome stayed unknown: if it did commit, the caller's next
        // transaction repeats its records (the worker's dedup by message id is the second line)
        tracing::warn!(error = %a, cause = %err, "cannot abort the transaction; the producer is started afresh");
        return Failure::Fatal(err);
    }
    match refused {
        true => Failure::Refused(err),
        false => Failure::Aborted(err),
    }
}

/// The group coordinator refused the member's generation or id: the member is a zombie.
fn refused(e: &RDKafkaError) -> bool {
    matches!(
        e.code(),
        RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::FencedInstanceId
            | RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::FencedMemberEpoch
            | RDKafkaErrorCode::StaleMemberEpoch
    )
}
