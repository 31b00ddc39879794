//! conveyor-kafka: the `kafka` backend, for Kafka, Redpanda and any Kafka-protocol broker, built on
//! rdkafka (librdkafka compiled from the crate's bundled source).
//!
//! | capability | kafka |
//! |---|---|
//! | publish | idempotent producer, `acks=all`, each record's delivery awaited; a batch is *not* atomic |
//! | key -> partition | `partitioner=murmur2_random`: the same partition as conveyor's embedded backend and Kafka's Java client |
//! | consumer groups | cooperative-sticky assignor, manual synchronous commits, rebalances reported to the runtime |
//! | fenced commits | locally: a member refuses to commit partitions it no longer owns |
//! | topic admin | Kafka's CreateTopics, DescribeConfigs, AlterConfigs, CreatePartitions (admin client); a [`TopicAdmin`] for peers without them |
//! | fetch / tail | a group-less reader assigned to one partition |
//! | [`conveyor_core::TransactionalCommit`] | a transactional producer per member, offsets sent with the consumer's group metadata (EOS v2); readers are `read_committed` |
//!
//! # Layout
//! - [`config`]: [`KafkaConfig`], profiles and pass-through librdkafka properties.
//! - [`admin`]: [`TopicAdmin`] and the admin-client implementation.
//! - `consumer`: the group member.
//! - `transaction`: exactly-once consume-and-emit (a member's transactional producer).
//! - `errors`: the client context that keeps librdkafka's last connection error (TLS, SASL).
//! - [`metrics`]: librdkafka's statistics (broker rtt, queues, bytes, fetch lag) as Prometheus metrics.
//! - [`mock`]: [`mock::MockBroker`], librdkafka's in-process mock cluster for tests and fault injection.
//! - [`raw_bench`]: the bare-rdkafka baseline for `conveyor bench --raw`.

pub mod admin;
pub mod config;
mod consumer;
mod errors;
pub mod metrics;
pub mod mock;
pub mod raw_bench;
mod transaction;
mod tx_producer;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use conveyor_core::topic::PartitionInfo;
use conveyor_core::{
    Backend, ConsumedRecord, Error, Position, Record, Result, StartFrom, SubscribeOptions,
    Subscription, TopicInfo, TopicSpec,
};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

pub use admin::{AdminClientTopics, TopicAdmin};
pub use config::{GroupProtocol, KafkaConfig, Profile};

use consumer::{to_record, GroupContext, KafkaSubscription};
use errors::ErrorWatch;

/// A reader's client context: the end-of-partition events a reader asks for are answers, not
/// errors (librdkafka also hands the ones still queued when the reader closes to the error
/// callback, which would log them as errors).
struct EofQuiet;

impl rdkafka::ClientContext for EofQuiet {
    /// A reader lives for one fetch: its statistics (when the properties ask for them) are
    /// dropped, not logged.
    fn stats(&self, _: rdkafka::Statistics) {}

    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!(%error, reason, "librdkafka reader error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EofQuiet {}

/// Maps an rdkafka error to conveyor's.
pub(crate) fn broker(e: KafkaError) -> Error {
    if let KafkaError::ClientConfig(_, desc, key, value) = &e {
        // rdkafka's own message ends with the value, which may be a (misspelt) secret
        let desc = match config::is_secret(key) && !value.is_empty() {
            true => desc.replace(value.as_str(), "******"),
            false => desc.clone(),
        };
        return Error::InvalidArgument(format!(
            "kafka property `{key}`: {desc} (see librdkafka's CONFIGURATION.md; set it under [kafka.properties])"
        ));
    }
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => Error::RecordTooLarge { size: 0, max: 0 },
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) | Some(RDKafkaErrorCode::UnknownTopic) => {
            Error::UnknownTopic(e.to_string())
        }
        _ => Error::Broker(e.to_string()),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Broker(format!("blocking task failed: {e}")))?
}

/// How long [`KafkaBackend::ping`] keeps trying after the cluster refused a TLS handshake or
/// SASL login before it reports the refusal.
const REFUSAL_GRACE: Duration = Duration::from_secs(2);

/// How long a topic's partition count is trusted before metadata is read again.
const PARTITION_CACHE_TTL: Duration = Duration::from_secs(60);

/// What metadata says of a topic.
struct TopicMeta {
    partitions: i32,
    /// Replicas of partition 0.
    replication: i32,
    /// Every partition has a leader (not so for a moment after CreateTopics/CreatePartitions).
    led: bool,
}

/// The Kafka backend. Clones share one producer.
#[derive(Debug, Clone)]
pub struct KafkaBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    producer: FutureProducer<ErrorWatch>,
    /// The producer's last connection error.
    errors: ErrorWatch,
    admin: Arc<dyn TopicAdmin>,
    /// Partition counts from metadata, with when they were read.
    partitions: RwLock<HashMap<String, (i32, Instant)>>,
    /// Readers of [`Backend::fetch`] between calls (at most [`KEPT_READERS`]): a reader made for
    /// each call cost a connection, a metadata round trip and a close, some 200 ms, which
    /// serialized every control-log append behind the others.
    readers: std::sync::Mutex<Vec<BaseConsumer<EofQuiet>>>,
    closed: AtomicBool,
}

/// How many idle readers a backend keeps.
const KEPT_READERS: usize = 4;

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KafkaBackend {
    /// Connects to the cluster (lazily: the first call contacts it), creating topics with Kafka's
    /// admin API.
    pub fn connect(config: KafkaConfig) -> Result<Self> {
        let admin = Arc::new(AdminClientTopics::new(&config)?);
        Self::with_admin(config, admin)
    }

    /// Connects, administering topics through `admin` (e.g. a [`mock::MockBroker`]).
    pub fn with_admin(config: KafkaConfig, admin: Arc<dyn TopicAdmin>) -> Result<Self> {
        let mut pc = config.producer();
        pc.set("allow.auto.create.topics", "false");
        metrics::enable_stats(&mut pc);
        let errors = ErrorWatch::default();
        let producer: FutureProducer<ErrorWatch> =
            pc.create_with_context(errors.clone()).map_err(broker)?;
        Ok(KafkaBackend {
            inner: Arc::new(Inner {
                config,
                producer,
                errors,
                admin,
                partitions: RwLock::new(HashMap::new()),
                readers: std::sync::Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    fn ensure_open(&self) -> Result<()> {
        match self.inner.closed.load(Ordering::Acquire) {
            true => Err(Error::Closed),
            false => Ok(()),
        }
    }

    /// Checks that the cluster answers a metadata request within the request timeout, so a
    /// wrong address, a refused TLS handshake or a failed SASL login stops a start with the
    /// reason librdkafka gave (which never contains a secret) instead of a later timeout.
    pub async fn ping(&self) -> Result<()> {
        self.ensure_open()?;
        let (producer, watch, brokers, timeout) = (
            self.inner.producer.clone(),
            self.inner.errors.clone(),
            self.inner.config.brokers.clone(),
            self.inner.config.request_timeout,
        );
        blocking(move || {
            let deadline = Instant::now() + timeout;
            // a refusal not followed by an answer within REFUSAL_GRACE stops the start early (a
            // single one may be a broker still starting, or SCRAM users created a moment ago;
            // librdkafka reports an identical failure only once, so waiting for a second one
            // would mean waiting for the whole timeout)
            let mut refusal: Option<(Instant, String)> = None;
            loop {
                let step = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(500));
                let err = match producer.client().fetch_metadata(None, step) {
                    Ok(_) => return Ok(()),
                    Err(e) => e,
                };
                if let Some(reason) = watch.take_refused() {
                    let since = refusal.map_or_else(Instant::now, |(t, _)| t);
                    refusal = Some((since, reason));
                }
                if let Some((since, reason)) = &refusal {
                    if since.elapsed() >= REFUSAL_GRACE || Instant::now() >= deadline {
                        return Err(Error::Broker(format!(
                            "the Kafka cluster at {brokers} refused the connection: {reason}; check the TLS and SASL settings in [kafka.properties]"
                        )));
                    }
                }
                if Instant::now() >= deadline {
                    let last = watch.last().unwrap_or_else(|| err.to_string());
                    return Err(Error::Broker(format!(
                        "cannot reach the Kafka cluster at {brokers} within {timeout:?}: {last}; check kafka.brokers and that the brokers run"
                    )));
                }
            }
        })
        .await
    }

    /// The topic as metadata shows it, `None` when it does not exist. Refreshes the partition
    /// cache.
    async fn metadata(&self, topic: &str) -> Result<Option<TopicMeta>> {
        let (producer, topic_owned, timeout) = (
            self.inner.producer.clone(),
            topic.to_owned(),
            self.inner.config.request_timeout,
        );
        let found = blocking(move || {
            let md = producer
                .client()
                .fetch_metadata(Some(&topic_owned), timeout)
                .map_err(broker)?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == topic_owned)
                .and_then(|t| {
                    (t.error().is_none() && !t.partitions().is_empty()).then(|| TopicMeta {
                        partitions: t.partitions().len() as i32,
                        replication: t.partitions()[0].replicas().len() as i32,
                        led: t
                            .partitions()
                            .iter()
                            .all(|p| p.error().is_none() && p.leader() >= 0),
                    })
                }))
        })
        .await?;
        let mut cache = self.inner.partitions.write().expect("partition cache");
        match &found {
            Some(m) => cache.insert(topic.to_owned(), (m.partitions, Instant::now())),
            None => cache.remove(topic),
        };
        Ok(found)
    }

    /// Partition count from metadata, `None` when the topic does not exist.
    async fn fetch_partitions(&self, topic: &str) -> Result<Option<i32>> {
        Ok(self.metadata(topic).await?.map(|m| m.partitions))
    }

    /// The partition count used to route keys; re-read from metadata after
    /// [`PARTITION_CACHE_TTL`] so partitions added elsewhere are used (as Kafka's producers do
    /// with `metadata.max.age.ms`).
    async fn partitions(&self, topic: &str) -> Result<i32> {
        if let Some((n, at)) = self
            .inner
            .partitions
            .read()
            .expect("partition cache")
            .get(topic)
        {
            if at.elapsed() < PARTITION_CACHE_TTL {
                return Ok(*n);
            }
        }
        self.fetch_partitions(topic)
            .await?
            .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))
    }

    async fn describe(&self, topic: &str) -> Result<Option<TopicInfo>> {
        let Some(n) = self.fetch_partitions(topic).await? else {
            return Ok(None);
        };
        let (producer, name, timeout) = (
            self.inner.producer.clone(),
            topic.to_owned(),
            self.inner.config.request_timeout,
        );
        blocking(move || {
            let partitions = (0..n)
                .map(|p| {
                    let (low, high) = watermarks(producer.client(), &name, p, timeout)?;
                    Ok(PartitionInfo {
                        partition: p,
                        low,
                        high,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Some(TopicInfo { name, partitions }))
        })
        .await
    }

    /// Publishes `records` and awaits every delivery; [`Backend::publish`] bounds it in time.
    async fn publish_records(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>> {
        let mut n = self.partitions(topic).await?;
        if let Some(p) = records
            .iter()
            .filter_map(|r| r.partition)
            .find(|p| !(0..n).contains(p))
        {
            n = self
                .fetch_partitions(topic)
                .await?
                .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))?;
            if !(0..n).contains(&p) {
                return Err(Error::UnknownPartition {
                    topic: topic.to_owned(),
                    partition: p,
                });
            }
        }
        let mut deliveries = Vec::with_capacity(records.len());
        for r in &records {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in r.headers.iter() {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(&v[..]),
                });
            }
            let mut rec = FutureRecord::<[u8], [u8]>::to(topic)
                .payload(&r.value[..])
                .headers(headers);
            if let Some(k) = &r.key {
                rec = rec.key(&k[..]);
            }
            if let Some(p) = r.partition {
                rec = rec.partition(p);
            }
            if let Some(t) = r.timestamp {
                rec = rec.timestamp(t);
            }
            loop {
                match self.inner.producer.send_result(rec) {
                    Ok(f) => {
                        deliveries.push(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        rec = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((
                        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                        _,
                    )) => {
                        let e = Error::RecordTooLarge {
                            size: r.byte_len(),
                            max: 1_000_000,
                        };
                        return Err(partly(stored(deliveries).await, records.len(), e));
                    }
                    Err((e, _)) => {
                        let e = broker(e);
                        return Err(partly(stored(deliveries).await, records.len(), e));
                    }
                }
            }
        }
        let mut positions = Vec::with_capacity(records.len());
        let mut failure = None;
        for outcome in await_deliveries(deliveries).await {
            match outcome {
                Ok(p) => positions.push(p),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            None => Ok(positions),
            Some(e) => Err(partly(positions.len(), records.len(), e)),
        }
    }

    fn reader(&self, group: &str) -> Result<BaseConsumer> {
        self.inner.config.reader(group).create().map_err(broker)
    }

    /// Waits until a topic that was just created (here or by another process) serves requests:
    /// metadata lists it, every partition has a leader and its watermarks answer. Kafka answers
    /// `NotLeaderForPartition` for a moment after CreateTopics while the leaders are elected.
    async fn wait_until_ready(&self, topic: &str, partitions: i32) -> Result<TopicInfo> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        loop {
            let last = match self.led_partitions(topic).await {
                // more than asked for: another process made it so; fewer: added partitions
                // that metadata does not show yet
                Ok(Some(n)) if n > partitions => {
                    return Err(Error::TopicConflict {
                        topic: topic.to_owned(),
                        existing: n,
                        requested: partitions,
                    })
                }
                Ok(Some(n)) if n < partitions => format!("metadata shows {n} partitions"),
                Ok(Some(_)) => match self.describe(topic).await {
                    Ok(Some(info)) => return Ok(info),
                    Ok(None) => "it does not show in metadata".to_owned(),
                    Err(e) => e.to_string(),
                },
                Ok(None) => "not every partition has a leader yet".to_owned(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Broker(format!(
                    "topic `{topic}` was created but does not serve requests after {:?} ({last}); check the brokers' health and run the command again",
                    self.inner.config.request_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The partition count when the topic exists and every partition has a leader, else `None`.
    async fn led_partitions(&self, topic: &str) -> Result<Option<i32>> {
        Ok(self
            .metadata(topic)
            .await?
            .and_then(|m| m.led.then_some(m.partitions)))
    }
}

#[async_trait]
impl Backend for KafkaBackend {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn create_topic(&self, spec: &TopicSpec) -> Result<TopicInfo> {
        self.ensure_open()?;
        spec.validate()?;
        if let Some(existing) = self.fetch_partitions(&spec.name).await? {
            if existing != spec.partitions {
                return Err(Error::TopicConflict {
                    topic: spec.name.clone(),
                    existing,
                    requested: spec.partitions,
                });
            }
        } else {
            self.inner.admin.create(spec).await?;
        }
        self.wait_until_ready(&spec.name, spec.partitions).await
    }

    async fn describe_topic(&self, topic: &str) -> Result<Option<TopicInfo>> {
        self.ensure_open()?;
        self.describe(topic).await
    }

    async fn topic_spec(&self, topic: &str) -> Result<Option<TopicSpec>> {
        self.ensure_open()?;
        let Some(TopicMeta {
            partitions,
            replication,
            ..
        }) = self.metadata(topic).await?
        else {
            return Ok(None);
        };
        let c = self.inner.admin.configs(topic).await?;
        Ok(Some(TopicSpec {
            name: topic.to_owned(),
            partitions,
            retention_ms: c.retention_ms,
            retention_bytes: c.retention_bytes,
            cleanup_policy: c.cleanup_policy,
            replication_factor: Some(replication),
            min_insync_replicas: c.min_insync_replicas,
        }))
    }

    async fn update_topic(&self, spec: &TopicSpec) -> Result<TopicInfo> {
        self.ensure_open()?;
        spec.validate()?;
        let current = self
            .topic_spec(&spec.name)
            .await?
            .ok_or_else(|| Error::UnknownTopic(spec.name.clone()))?;
        if spec.partitions < current.partitions {
            return Err(Error::TopicConflict {
                topic: spec.name.clone(),
                existing: current.partitions,
                requested: spec.partitions,
            });
        }
        let want = admin::config_entries(spec);
        let have = admin::config_entries(&TopicSpec {
            min_insync_replicas: spec.min_insync_replicas.and(current.min_insync_replicas),
            ..current.clone()
        });
        let changed: Vec<_> = want.into_iter().filter(|e| !have.contains(e)).collect();
        if !changed.is_empty() {
            self.inner.admin.alter(&spec.name, &changed).await?;
        }
        if spec.partitions > current.partitions {
            self.inner
                .admin
                .add_partitions(&spec.name, spec.partitions)
                .await?;
            return self.wait_until_ready(&spec.name, spec.partitions).await;
        }
        self.describe(&spec.name)
            .await?
            .ok_or_else(|| Error::UnknownTopic(spec.name.clone()))
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        self.ensure_open()?;
        let (producer, timeout) = (
            self.inner.producer.clone(),
            self.inner.config.request_timeout,
        );
        let names: BTreeSet<String> = blocking(move || {
            let md = producer
                .client()
                .fetch_metadata(None, timeout)
                .map_err(broker)?;
            Ok(md
                .topics()
                .iter()
                .filter(|t| !t.name().starts_with("__"))
                .map(|t| t.name().to_owned())
                .collect())
        })
        .await?;
        let mut out = Vec::new();
        for n in names {
            if let Some(info) = self.describe(&n).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    async fn publish(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>> {
        self.ensure_open()?;
        let bound = self.inner.config.delivery_timeout;
        match tokio::time::timeout(bound, self.publish_records(topic, records)).await {
            Ok(result) => result,
            // librdkafka fails an in-flight record only when its request times out, which can
            // be later than message.timeout.ms: the caller gets its answer at the bound anyway
            Err(_) => Err(Error::Broker(format!(
                "the cluster did not confirm the records within the delivery timeout ({bound:?}); they may still be stored later, so a retry can store one twice but never lose it"
            ))),
        }
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        self.ensure_open()?;
        if options.group.is_empty() {
            return Err(Error::InvalidArgument(
                "the consumer group name is empty".into(),
            ));
        }
        for t in &options.topics {
            self.partitions(t).await?;
        }
        let reset = match options.start {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        };
        let mut cc = self.inner.config.consumer(&options.group, reset);
        metrics::enable_stats(&mut cc);
        let mut context = GroupContext::new(
            options.on_revoke.clone(),
            (options.start == StartFrom::Latest).then_some(self.inner.config.request_timeout),
        );
        context.group = options.group.clone();
        let consumer: StreamConsumer<GroupContext> =
            cc.create_with_context(context).map_err(broker)?;
        let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(broker)?;
        Ok(Box::new(KafkaSubscription {
            consumer: Arc::new(consumer),
            group: options.group,
            assignment: BTreeSet::new(),
            held: Vec::new(),
            paused: BTreeSet::new(),
            request_timeout: self.inner.config.request_timeout,
            tx_factory: tx_producer::TxFactory {
                config: self.inner.config.producer(),
                timeout: self
                    .inner
                    .config
                    .delivery_timeout
                    .max(Duration::from_secs(10)),
            },
            tx: None,
        }))
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max: usize,
    ) -> Result<Vec<ConsumedRecord>> {
        self.ensure_open()?;
        let n = self.partitions(topic).await?;
        if !(0..n).contains(&partition) {
            return Err(Error::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            });
        }
        // told when it reached the end: a partition written by transactions has commit
        // markers, offsets with no record, so counting records to the high watermark would
        // wait for records that never come (and read_committed stops at the last stable one)
        let kept = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let reader: BaseConsumer<EofQuiet> = match kept {
            Some(r) => r,
            None => self
                .inner
                .config
                .reader(&format!(
                    "conveyor.reader.{}",
                    uuid::Uuid::now_v7().simple()
                ))
                .set("enable.partition.eof", "true")
                .create_with_context(EofQuiet)
                .map_err(broker)?,
        };
        let (topic, timeout) = (topic.to_owned(), self.inner.config.request_timeout);
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let read = read_from(&reader, &topic, partition, offset, max, timeout);
            // an assignment left behind would keep fetching for nobody; a reader not kept is
            // dropped here, on this thread: closing a consumer blocks until it has closed
            if read.is_ok() && reader.unassign().is_ok() {
                let mut kept = inner.readers.lock().unwrap_or_else(|e| e.into_inner());
                // `close` sets `closed` before it takes the readers, under this lock
                if !inner.closed.load(Ordering::Acquire) && kept.len() < KEPT_READERS {
                    kept.push(reader);
                }
            }
            read
        })
        .await
    }

    async fn committed_offsets(&self, group: &str, topic: &str) -> Result<Vec<(i32, Option<i64>)>> {
        self.ensure_open()?;
        let n = self.partitions(topic).await?;
        let reader = self.reader(group)?;
        let (topic, timeout) = (topic.to_owned(), self.inner.config.request_timeout);
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in 0..n {
                tpl.add_partition(&topic, p);
            }
            let committed = reader.committed_offsets(tpl, timeout).map_err(broker)?;
            Ok((0..n)
                .map(|p| {
                    let o = committed
                        .find_partition(&topic, p)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        });
                    (p, o)
                })
                .collect())
        })
        .await
    }

    /// 200 ms: each commit is a round trip to the group coordinator, which also serves heartbeats.
    fn commit_interval_hint(&self) -> Duration {
        Duration::from_millis(200)
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let readers =
            std::mem::take(&mut *self.inner.readers.lock().unwrap_or_else(|e| e.into_inner()));
        let (producer, timeout) = (
            self.inner.producer.clone(),
            self.inner.config.request_timeout,
        );
        blocking(move || {
            drop(readers);
            producer.flush(timeout).map_err(broker)
        })
        .await
    }
}

/// Reads up to `max` records of `topic`/`partition` from `offset` (or the log start, if later)
/// with `reader`, which is assigned that partition alone: a record of any other partition or
/// offset (one a previous assignment fetched) is skipped.
fn read_from(
    reader: &BaseConsumer<EofQuiet>,
    topic: &str,
    partition: i32,
    offset: i64,
    max: usize,
    timeout: Duration,
) -> Result<Vec<ConsumedRecord>> {
    let (low, high) = watermarks(reader.client(), topic, partition, timeout)?;
    let from = offset.max(low);
    let want = (high - from).clamp(0, max as i64) as usize;
    if want == 0 {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(broker)?;
    reader.assign(&tpl).map_err(broker)?;
    let deadline = Instant::now() + timeout;
    let mut out: Vec<ConsumedRecord> = Vec::with_capacity(want);
    while out.len() < want && Instant::now() < deadline {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let next = out.last().map_or(from, |r| r.offset + 1);
                if m.topic() == topic && m.partition() == partition && m.offset() >= next {
                    out.push(to_record(&m));
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => break,
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(broker(e)),
            None => {}
        }
    }
    Ok(out)
}

/// Waits for every enqueued record of a batch: where it landed, or why it did not.
async fn await_deliveries(deliveries: Vec<DeliveryFuture>) -> Vec<Result<Position>> {
    let mut out = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        out.push(match d.await {
            Ok(Ok(delivery)) => Ok(Position {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((e, _))) => Err(broker(e)),
            Err(_) => Err(Error::Closed),
        });
    }
    out
}

/// How many of the enqueued records were stored.
async fn stored(deliveries: Vec<DeliveryFuture>) -> usize {
    await_deliveries(deliveries)
        .await
        .iter()
        .filter(|o| o.is_ok())
        .count()
}

/// `cause`, or [`Error::PartlyStored`] when `stored` of the batch's `total` records were.
fn partly(stored: usize, total: usize, cause: Error) -> Error {
    match stored {
        0 => cause,
        stored => Error::PartlyStored {
            stored,
            total,
            cause: Box::new(cause),
        },
    }
}

/// The watermarks of `topic`/`partition` through `client`. A partition the client's metadata
/// does not know yet (a topic created a moment ago, by this process or another: seen on a fresh
/// three-node cluster, where a start failed with `UnknownPartition`) is asked again for up to
/// 2 s, the metadata refreshed in between, before it is an error.
fn watermarks<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match client.fetch_watermarks(topic, partition, timeout) {
            Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownPartition))
                if Instant::now() < deadline =>
            {
                let _ = client.fetch_metadata(Some(topic), timeout);
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other.map_err(broker),
        }
    }
}
