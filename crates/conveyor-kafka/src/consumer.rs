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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use conveyor_core::{
    CommitOffset, Committed, ConsumedRecord, Error, Headers, Poll, Result, Subscription,
    TopicPartition,
};
use futures_util::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers as _, Message};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// Queues rebalance events for the subscription, numbered from 1 in the order librdkafka ran
/// them.
#[derive(Debug, Default)]
pub(crate) struct GroupContext {
    /// Waited on before partitions are given up (the worker's running jobs on them).
    on_revoke: Option<conveyor_core::RevokeBarrier>,
    events: Mutex<VecDeque<Event>>,
    /// How many events were queued so far: the number of the latest.
    queued: AtomicU64,
    /// `StartFrom::Latest`: partitions assigned without a committed offset start at their end
    /// as of the assignment (looked up within this bound), not wherever librdkafka's lazy
    /// `auto.offset.reset` finds it later.
    latest: Option<Duration>,
    /// The group, for the statistics' metrics.
    pub(crate) group: String,
}

impl GroupContext {
    pub(crate) fn new(
        on_revoke: Option<conveyor_core::RevokeBarrier>,
        latest: Option<Duration>,
    ) -> Self {
        GroupContext {
            on_revoke,
            latest,
            ..GroupContext::default()
        }
    }

    /// Sets the start of each partition in `list` that has no committed offset to its high
    /// watermark now. librdkafka's `auto.offset.reset = latest` resolves the end only once it
    /// starts fetching, so a record published right after the assignment was reported could
    /// land before that end and be skipped. On a failed lookup the partition keeps the lazy
    /// reset (a warning says so).
    fn pin_latest(
        &self,
        consumer: &BaseConsumer<Self>,
        list: &mut TopicPartitionList,
        timeout: Duration,
    ) {
        // one bound for all the lookups: the callback holds up the consumer's poll meanwhile
        let deadline = std::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(std::time::Instant::now());
        let committed = match consumer.committed_offsets(list.clone(), left()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the group's committed offsets at assignment; new partitions start where librdkafka finds their end");
                return;
            }
        };
        for e in committed.elements() {
            // a partition whose committed offset could not be read keeps the lazy reset: pinned
            // to the end, a backlog it has committed below would be skipped
            if matches!(e.offset(), Offset::Offset(_)) || e.error().is_err() {
                continue;
            }
            if left().is_zero() {
                tracing::warn!(topic = e.topic(), partition = e.partition(), "no time left to read the end of a newly assigned partition; it starts where librdkafka finds it");
                continue;
            }
            match consumer.fetch_watermarks(e.topic(), e.partition(), left()) {
                Ok((_, high)) => {
                    if let Some(mut el) = list.find_partition(e.topic(), e.partition()) {
                        if let Err(err) = el.set_offset(Offset::Offset(high)) {
                            tracing::warn!(error = %err, topic = e.topic(), partition = e.partition(), "cannot set the start offset");
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, topic = e.topic(), partition = e.partition(), "cannot read the end of a newly assigned partition; it starts where librdkafka finds it")
                }
            }
        }
    }
}

/// One rebalance: partitions revoked or assigned.
#[derive(Debug)]
struct Event {
    seq: u64,
    revoked: Vec<TopicPartition>,
    assigned: Vec<TopicPartition>,
}

/// A record received but not yet returned, with the number of the latest rebalance event queued
/// when it was received: an event revoking its partition drops it only when it came earlier
/// (a record received after a later assign of the same partition is current).
#[derive(Debug)]
pub(crate) struct Held {
    after: u64,
    record: ConsumedRecord,
}

/// Whether this thread runs on a multi-thread tokio runtime, where `block_in_place` may hand
/// its tasks to another worker while a rebalance callback blocks.
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread)
}

fn tps(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::metrics::record(&statistics, "consumer", &self.group);
    }
}

impl ConsumerContext for GroupContext {
    /// rdkafka's own handling (`pre_rebalance`, the assignment, `post_rebalance`), with the
    /// starts of a `StartFrom::Latest` member's new partitions pinned first ([`Self::pin_latest`]).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        list: &mut TopicPartitionList,
    ) {
        let assign = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        if let (true, Some(timeout)) = (assign, self.latest) {
            // the lookups block (up to `timeout`): on a multi-thread runtime this worker
            // thread's tasks move to another one meanwhile, as for the revocation barrier
            if on_multi_thread_runtime() {
                tokio::task::block_in_place(|| self.pin_latest(consumer, list, timeout));
            } else {
                self.pin_latest(consumer, list, timeout);
            }
        }
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(list),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(list),
            _ => Rebalance::Error(KafkaError::Rebalance(err.into())),
        };
        self.pre_rebalance(consumer, &rebalance);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let done = match (err, cooperative) {
            (RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, true) => {
                consumer.incremental_assign(list)
            }
            (RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, false) => consumer.assign(list),
            (_, true) => consumer.incremental_unassign(list),
            (_, false) => consumer.unassign(),
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "applying a rebalance failed");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    /// Before partitions are taken away, commit what finished on them (the offsets the runtime
    /// stored with [`Subscription::store`]), so the next owner does not repeat it.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            // librdkafka hands the partitions on only after this callback returns: wait for the
            // work on them first, so no other member runs their keys meanwhile
            // (it blocks this thread while the jobs finish on others: a current-thread runtime
            // has none, so there it is skipped rather than stalling for its whole bound)
            let multi_thread = on_multi_thread_runtime();
            match &self.on_revoke {
                // block_in_place hands this worker thread's queued tasks (its LIFO slot
                // included, which no other thread steals) to another thread first: the job
                // waited for may be among them
                Some(barrier) if multi_thread => {
                    let tps = tps(list);
                    tokio::task::block_in_place(|| barrier.wait(&tps));
                }
                Some(_) => tracing::warn!("a current-thread runtime: this revocation does not wait for running jobs (use the multi-thread runtime to keep one key on one member at a time)"),
                None => {}
            }
            // a commit that fails (a loaded coordinator, a request timing out) is tried twice
            // more within a second: the next owner repeats whatever it leaves out
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
            loop {
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) => tracing::debug!(
                        partitions = list.count(),
                        "committed stored offsets before revocation"
                    ),
                    Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(e) if std::time::Instant::now() < deadline => {
                        tracing::info!(error = %e, "cannot commit stored offsets before revocation; trying again");
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot commit stored offsets before revocation; the next owner repeats that work")
                    }
                }
                break;
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (revoked, assigned) = match rebalance {
            Rebalance::Assign(list) => (Vec::new(), tps(list)),
            Rebalance::Revoke(list) => (tps(list), Vec::new()),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
                return;
            }
        };
        let mut events = self.events.lock().expect("events lock");
        let seq = self.queued.fetch_add(1, Ordering::SeqCst) + 1;
        events.push_back(Event {
            seq,
            revoked,
            assigned,
        });
    }
}

/// One member of a Kafka consumer group.
pub(crate) struct KafkaSubscription {
    pub(crate) consumer: Arc<StreamConsumer<GroupContext>>,
    pub(crate) group: String,
    pub(crate) assignment: BTreeSet<TopicPartition>,
    /// Records received but not yet returned: the rest of a batch cut by a rebalance event, and
    /// records of paused partitions that librdkafka had already queued (its position is past
    /// them, so they are kept here until the partition resumes).
    pub(crate) held: Vec<Held>,
    pub(crate) paused: BTreeSet<TopicPartition>,
    /// Bounds a read of the committed offsets.
    pub(crate) request_timeout: Duration,
    /// Makes the transactional producer on first use ([`crate::tx_producer`]).
    pub(crate) tx_factory: crate::tx_producer::TxFactory,
    /// The transactional producer, once made.
    pub(crate) tx: Option<crate::tx_producer::TxProducer>,
}

impl KafkaSubscription {
    /// The offsets of partitions this member owns.
    fn owned<'a>(&self, offsets: &'a [CommitOffset]) -> Vec<&'a CommitOffset> {
        offsets
            .iter()
            .filter(|c| self.assignment.contains(&c.tp))
            .collect()
    }
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("group", &self.group)
            .field("assignment", &self.assignment)
            .finish_non_exhaustive()
    }
}

/// Copies a borrowed message into an owned record (the borrow must not outlive the poll): the
/// value and the key each in their own allocation (a parked key must not pin its record), the
/// header values together in one, each a slice of it (a conveyor record has some ten headers:
/// one allocation each cost more than the copies).
pub(crate) fn to_record(m: &BorrowedMessage<'_>) -> ConsumedRecord {
    let mut names: Vec<(String, std::ops::Range<usize>)> = Vec::new();
    let mut values: Vec<u8> = Vec::new();
    if let Some(h) = m.headers() {
        names.reserve_exact(h.count());
        for i in 0..h.count() {
            // rust-rdkafka unwraps the header name as UTF-8 (`BorrowedHeaders::try_get`), so a
            // record another producer wrote with a non-UTF-8 name would panic the poll loop;
            // such a header is skipped and the record delivered with the others
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.try_get(i))) {
                Ok(Some(header)) => {
                    let at = values.len();
                    values.extend_from_slice(header.value.unwrap_or_default());
                    names.push((header.key.to_owned(), at..values.len()));
                }
                Ok(None) => {}
                Err(_) => tracing::warn!(
                    topic = m.topic(),
                    partition = m.partition(),
                    offset = m.offset(),
                    header = i,
                    "skipped a header whose name is not UTF-8"
                ),
            }
        }
    }
    let values = bytes::Bytes::from(values);
    let mut headers = Headers::new();
    for (name, range) in names {
        headers.append(name, values.slice(range));
    }
    ConsumedRecord {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis().unwrap_or(0),
        key: m.key().map(bytes::Bytes::copy_from_slice),
        value: m
            .payload()
            .map(bytes::Bytes::copy_from_slice)
            .unwrap_or_default(),
        headers,
    }
}

/// A consumer error that only says a broker is (for now) unreachable.
fn transient(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
        )
    )
}

/// Offsets with their metadata, as librdkafka commits and stores them.
pub(crate) fn commit_list(offsets: &[&CommitOffset]) -> Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for c in offsets {
        let mut e = list.add_partition(&c.tp.topic, c.tp.partition);
        e.set_offset(Offset::Offset(c.next_offset))
            .map_err(crate::broker)?;
        e.set_metadata(c.metadata.as_str());
    }
    Ok(list)
}

fn tp_list(tps: &[&TopicPartition]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for tp in tps {
        list.add_partition(&tp.topic, tp.partition);
    }
    list
}

impl KafkaSubscription {
    fn is_paused(&self, r: &ConsumedRecord) -> bool {
        !self.paused.is_empty() && self.paused.contains(&r.tp())
    }

    /// Adds a record just received to the batch, or parks it when its partition is paused.
    fn admit(&mut self, record: ConsumedRecord, batch: &mut Vec<Held>) {
        let after = self.consumer.context().queued.load(Ordering::SeqCst);
        let paused = self.is_paused(&record);
        let held = Held { after, record };
        match paused {
            true => self.held.push(held),
            false => batch.push(held),
        }
    }

    /// Up to `max` held records of partitions that are not paused, in the order received.
    fn take_held(&mut self, max: usize) -> Vec<ConsumedRecord> {
        let mut out = Vec::new();
        let mut keep = Vec::with_capacity(self.held.len());
        for h in std::mem::take(&mut self.held) {
            if out.len() < max && !self.is_paused(&h.record) {
                out.push(h.record);
            } else {
                keep.push(h);
            }
        }
        self.held = keep;
        out
    }

    fn has_event(&self) -> bool {
        !self
            .consumer
            .context()
            .events
            .lock()
            .expect("events lock")
            .is_empty()
    }

    /// Applies and returns the oldest queued rebalance event. Held records of the partitions it
    /// revokes that were received before it are dropped (the next owner gets them from the
    /// committed offset); no other record is, so several events queued in one poll (a revoke
    /// and an assign, or a partition revoked and assigned back) lose nothing.
    fn next_event(&mut self) -> Option<Poll> {
        let Event {
            seq,
            revoked,
            assigned,
        } = self
            .consumer
            .context()
            .events
            .lock()
            .expect("events lock")
            .pop_front()?;
        for tp in &revoked {
            self.assignment.remove(tp);
            self.paused.remove(tp);
        }
        self.held.retain(|h| {
            h.after >= seq
                || !revoked
                    .iter()
                    .any(|tp| tp.topic == h.record.topic && tp.partition == h.record.partition)
        });
        if !assigned.is_empty() {
            // librdkafka keeps an application pause across unassign and assign (its
            // rdkafka_assignment.c; librdkafka#1849): a partition paused before it was revoked
            // would come back paused with nothing here to resume it
            let list: Vec<&TopicPartition> = assigned.iter().collect();
            if let Err(e) = self.consumer.resume(&tp_list(&list)) {
                tracing::warn!(error = %e, "cannot resume newly assigned partitions");
            }
        }
        self.assignment.extend(assigned.iter().cloned());
        Some(Poll::Rebalance { revoked, assigned })
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Poll> {
        let max = max.max(1);
        if let Some(e) = self.next_event() {
            return Ok(e);
        }
        let ready = self.take_held(max);
        if !ready.is_empty() {
            return Ok(Poll::Records(ready));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut records = Vec::new();
        while records.is_empty() {
            let first = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => return Ok(self.next_event().unwrap_or(Poll::Idle)),
                Ok(Err(e)) if transient(&e) => {
                    // a broker being down or unreachable is not the poll's failure: librdkafka
                    // reconnects on its own and the records come once it has; returning would
                    // make the caller back off while the errors keep coming, starving delivery
                    tracing::warn!(error = %e, "consumer: broker unreachable; polling on");
                    continue;
                }
                Ok(Err(e)) => return Err(crate::broker(e)),
                Ok(Ok(m)) => to_record(&m),
            };
            self.admit(first, &mut records);
            while records.len() < max {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(m)) => self.admit(to_record(&m), &mut records),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "consumer error");
                        break;
                    }
                    None => break,
                }
            }
            if self.has_event() {
                // hold the batch back until every queued event was returned: records of
                // partitions the first event revokes are dropped by it, the others (of
                // partitions a later queued event assigns, too) come after the events
                self.held.extend(records);
                return Ok(self.next_event().expect("an event is queued"));
            }
        }
        Ok(Poll::Records(
            records.into_iter().map(|h| h.record).collect(),
        ))
    }

    fn pause(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        let owned: Vec<&TopicPartition> = partitions
            .iter()
            .filter(|tp| self.assignment.contains(*tp))
            .collect();
        if owned.is_empty() {
            return Ok(());
        }
        self.consumer
            .pause(&tp_list(&owned))
            .map_err(crate::broker)?;
        self.paused.extend(owned.into_iter().cloned());
        Ok(())
    }

    fn resume(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        let paused: Vec<&TopicPartition> = partitions
            .iter()
            .filter(|tp| self.paused.contains(*tp))
            .collect();
        if paused.is_empty() {
            return Ok(());
        }
        self.consumer
            .resume(&tp_list(&paused))
            .map_err(crate::broker)?;
        for tp in paused {
            self.paused.remove(tp);
        }
        Ok(())
    }

    async fn commit(&mut self, offsets: &[CommitOffset]) -> Result<()> {
        conveyor_core::backend::check_commit_metadata(offsets)?;
        let owned = self.owned(offsets);
        let refused = offsets.iter().find(|c| !self.assignment.contains(&c.tp));
        if !owned.is_empty() {
            let list = commit_list(&owned)?;
            let consumer = Arc::clone(&self.consumer);
            tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
                .await
                .map_err(|e| Error::Broker(e.to_string()))?
                .map_err(crate::broker)?;
        }
        match refused {
            Some(c) => Err(Error::not_assigned(&c.tp)),
            None => Ok(()),
        }
    }

    async fn committed(&mut self, partitions: &[TopicPartition]) -> Result<Vec<Committed>> {
        let mut list = TopicPartitionList::new();
        for tp in partitions {
            list.add_partition(&tp.topic, tp.partition);
        }
        let (consumer, timeout) = (Arc::clone(&self.consumer), self.request_timeout);
        let got = tokio::task::spawn_blocking(move || consumer.committed_offsets(list, timeout))
            .await
            .map_err(|e| Error::Broker(e.to_string()))?
            .map_err(crate::broker)?;
        Ok(partitions
            .iter()
            .map(|tp| {
                let e = got.find_partition(&tp.topic, tp.partition);
                Committed {
                    tp: tp.clone(),
                    next_offset: e.as_ref().and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    }),
                    // rust-rdkafka unwraps the metadata as UTF-8; another client's binary
                    // metadata reads as none
                    metadata: e
                        .and_then(|e| {
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                e.metadata().to_owned()
                            }))
                            .ok()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect())
    }

    fn transactional(&mut self) -> Option<&mut dyn conveyor_core::TransactionalCommit> {
        Some(self)
    }

    fn store(&mut self, offsets: &[CommitOffset]) -> Result<()> {
        conveyor_core::backend::check_commit_metadata(offsets)?;
        let owned = self.owned(offsets);
        if !owned.is_empty() {
            self.consumer
                .store_offsets(&commit_list(&owned)?)
                .map_err(crate::broker)?;
        }
        Ok(())
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.assignment.iter().cloned().collect()
    }

    async fn leave(&mut self, timeout: Duration) {
        // a rebalance under way postpones the unsubscribe, and an empty assignment may still
        // have partitions being stopped or an assignment on its way: poll (which serves the
        // rebalance callback) until nothing is assigned and no rebalance came for a while
        const QUIET: Duration = Duration::from_millis(300);
        self.consumer.unsubscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let queued = || self.consumer.context().queued.load(Ordering::SeqCst);
        let (mut seen, mut quiet_since) = (queued(), tokio::time::Instant::now());
        loop {
            // records polled now are not delivered: nothing stores their offsets
            let _ = tokio::time::timeout(Duration::from_millis(100), self.consumer.recv()).await;
            let now_seen = queued();
            if now_seen != seen {
                (seen, quiet_since) = (now_seen, tokio::time::Instant::now());
            }
            let empty = match self.consumer.assignment() {
                Ok(list) => list.count() == 0,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the assignment while leaving the group");
                    return;
                }
            };
            if empty && quiet_since.elapsed() >= QUIET {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(?timeout, "still assigned or rebalancing when leaving the group; closing the consumer anyway");
                return;
            }
        }
    }

    fn group(&self) -> &str {
        &self.group
    }
}
