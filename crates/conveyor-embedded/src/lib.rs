//! conveyor-embedded: the default backend, a durable partitioned log on local disk inside the
//! process. Zero set-up, one machine.
//!
//! Storage is [fjall](https://docs.rs/fjall), an LSM-tree engine with a write-ahead journal: each
//! topic is a keyspace whose keys are `(partition, offset)`, so a partition is an ordered range.
//! A single writer thread turns concurrent publishes into group commits (see [`store`]).
//!
//! | capability | embedded |
//! |---|---|
//! | publish / subscribe / fetch | yes |
//! | key -> partition | murmur2, as Kafka's Java client |
//! | consumer groups | in-process members, round-robin assignor, fenced commits |
//! | durability | OS write per group commit (`kill -9` safe); `fsync` per group commit by default |
//! | retention | by age (`retention_ms`) and size (`retention_bytes`) per partition; unique-key claims once their hold ended |
//! | [`conveyor_core::TransactionalCommit`] | yes: records and offsets in one atomic write, fenced to the member |
//! | multiple processes on one data folder | no: the folder is locked by its process |
//! | a failed write (full disk, I/O error) | that write and all later ones refused, saying what to do; [`conveyor_core::Backend::health`] is `Err` until the log is opened again (in a new process); acknowledged records kept |
//!
//! # Layout
//! - [`config`]: [`EmbeddedConfig`] and [`Durability`].
//! - `store`: keyspaces, the writer thread, reads, offsets, retention.
//! - `group`: consumer-group membership and assignment.
//! - `subscription`: a group member.
//! - `codec`: the on-disk record format.
//! - `health`: the first failed write, which every later one reports.

mod codec;
pub mod config;
mod group;
mod health;
mod store;
mod subscription;
mod watermarks;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use conveyor_core::{
    Backend, ConsumedRecord, Position, Record, Result, SubscribeOptions, Subscription, TopicInfo,
    TopicSpec,
};

pub use config::{Durability, EmbeddedConfig};

use group::Groups;
use store::Store;
use subscription::EmbeddedSubscription;

/// The embedded backend. Clones share one log.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> conveyor_core::Result<()> {
/// use conveyor_core::{Backend, Record, TopicSpec};
/// let dir = tempfile::tempdir()?;
/// let backend = conveyor_embedded::EmbeddedBackend::open(conveyor_embedded::EmbeddedConfig::new(dir.path()))?;
/// backend.create_topic(&TopicSpec::new("emails", 3)).await?;
/// let at = backend.publish("emails", vec![Record::new("{}").with_key("user-1")]).await?;
/// assert_eq!(at[0].offset, 0);
/// backend.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EmbeddedBackend {
    store: Arc<Store>,
    groups: Arc<Groups>,
}

impl EmbeddedBackend {
    /// Opens the log in `config.path`, creating it when missing, and recovers its topics.
    pub fn open(config: EmbeddedConfig) -> Result<Self> {
        Ok(EmbeddedBackend {
            store: Store::open(config)?,
            groups: Arc::new(Groups::default()),
        })
    }

    /// Applies retention now as if the time were `now_ms`; returns how many records were deleted.
    /// (It also runs by itself every [`EmbeddedConfig::retention_interval`].)
    pub async fn run_retention(&self, now_ms: i64) -> Result<u64> {
        self.store.retention(now_ms).await
    }

    /// How many unique-key claims the log keeps: those of jobs holding their key (retention
    /// removes the claims whose hold ended).
    pub fn unique_claims_kept(&self) -> Result<usize> {
        self.store.unique_claims()
    }
}

#[async_trait]
impl conveyor_core::UniqueClaims for EmbeddedBackend {
    async fn claim(
        &self,
        scope: &str,
        key: &str,
        id: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<Option<(String, i64)>> {
        let store = Arc::clone(&self.store);
        let (scope, key, id) = (scope.to_owned(), key.to_owned(), id.to_owned());
        tokio::task::spawn_blocking(move || store.claim_unique(&scope, &key, &id, until_ms, now_ms))
            .await
            .map_err(|e| {
                conveyor_core::Error::Storage(format!("the unique-key claim failed: {e}"))
            })?
    }

    async fn release(&self, scope: &str, key: &str, id: &str) -> Result<()> {
        self.store.release_unique(scope, key, id)
    }
}

#[async_trait]
impl Backend for EmbeddedBackend {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn check_spec(&self, spec: &TopicSpec) -> Result<()> {
        Store::supported(spec.clone()).map(|_| ())
    }

    fn unique_claims(&self) -> Option<&dyn conveyor_core::UniqueClaims> {
        Some(self)
    }

    async fn create_topic(&self, spec: &TopicSpec) -> Result<TopicInfo> {
        self.store.create_topic(spec.clone()).await
    }

    async fn describe_topic(&self, topic: &str) -> Result<Option<TopicInfo>> {
        self.store.ensure_open()?;
        Ok(self.store.topic(topic).map(|t| t.info()))
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        self.store.list()
    }

    async fn topic_spec(&self, topic: &str) -> Result<Option<TopicSpec>> {
        self.store.ensure_open()?;
        Ok(self.store.topic(topic).map(|t| t.spec.clone()))
    }

    async fn update_topic(&self, spec: &TopicSpec) -> Result<TopicInfo> {
        let info = self.store.update_topic(spec.clone()).await?;
        self.groups.resize(&spec.name, info.partition_count());
        self.store.changes.send_modify(|v| *v += 1);
        Ok(info)
    }

    async fn publish(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>> {
        self.store.publish(topic, records).await
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn Subscription>> {
        self.store.ensure_open()?;
        let mut topics = Vec::new();
        for t in &options.topics {
            let log = self.store.topic_or_err(t)?;
            topics.push((t.clone(), log.spec.partitions));
        }
        if options.group.is_empty() {
            return Err(conveyor_core::Error::InvalidArgument(
                "the consumer group name is empty".into(),
            ));
        }
        let member = self.groups.join(&options.group, topics);
        self.store.changes.send_modify(|v| *v += 1);
        let membership = Arc::new(subscription::Membership {
            store: Arc::clone(&self.store),
            groups: Arc::clone(&self.groups),
            group: options.group.clone(),
            member,
            writes: Default::default(),
        });
        Ok(Box::new(EmbeddedSubscription {
            store: Arc::clone(&self.store),
            groups: Arc::clone(&self.groups),
            group: options.group,
            member,
            membership,
            start: options.start,
            generation: 0,
            positions: BTreeMap::new(),
            changes: self.store.changes.subscribe(),
            cursor: 0,
            paused: BTreeSet::new(),
            on_revoke: options.on_revoke,
            releasing: Vec::new(),
            pending: None,
        }))
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max: usize,
    ) -> Result<Vec<ConsumedRecord>> {
        self.store.ensure_open()?;
        let log = self.store.topic_or_err(topic)?;
        self.store.read(&log, partition, offset, max)
    }

    async fn committed_offsets(&self, group: &str, topic: &str) -> Result<Vec<(i32, Option<i64>)>> {
        let log = self.store.topic_or_err(topic)?;
        (0..log.spec.partitions)
            .map(|p| Ok((p, self.store.committed(group, topic, p)?)))
            .collect()
    }

    async fn close(&self) -> Result<()> {
        self.store.shutdown().await
    }

    fn health(&self) -> Result<()> {
        self.store.health()
    }
}
