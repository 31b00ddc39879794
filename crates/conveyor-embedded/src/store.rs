//! The log store: topics as fjall keyspaces, a single writer thread doing group commits, reads,
//! committed offsets and retention.
//!
//! Every change (create topic, append, atomic append-and-commit, retention) goes through one
//! writer thread. It takes all requests waiting in its queue, writes them as one fjall batch (one
//! journal write, one fsync under [`Durability::Fsync`]) and only then publishes the new high
//! watermarks and answers the callers. Readers never see a record before it is durable, and many
//! concurrent single-record publishes cost one disk flush.
//!
//! This file holds the store's state, its requests and its reads; the writer thread is
//! `store/writer.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use conveyor_core::partitioner::partition_for_key;
use conveyor_core::topic::{CleanupPolicy, PartitionInfo};
use conveyor_core::{
    now_millis, CommitOffset, ConsumedRecord, Error, Position, Record, Result, TopicInfo, TopicSpec,
};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::{oneshot, watch};

use crate::codec::{decode, encode, log_key, parse_log_key, timestamp_of};
use crate::config::{Durability, EmbeddedConfig};
use crate::health::Health;
use crate::watermarks;

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// One partition's watermarks and size. Only the writer thread changes them.
#[derive(Debug, Default)]
pub(crate) struct PartState {
    pub(crate) low: AtomicI64,
    pub(crate) high: AtomicI64,
    pub(crate) bytes: AtomicU64,
}

/// One topic: its spec, its keyspace and its partitions.
pub(crate) struct TopicLog {
    pub(crate) spec: TopicSpec,
    ks: Keyspace,
    pub(crate) parts: Vec<PartState>,
    round_robin: AtomicU32,
}

impl std::fmt::Debug for TopicLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicLog")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl TopicLog {
    pub(crate) fn info(&self) -> TopicInfo {
        TopicInfo {
            name: self.spec.name.clone(),
            partitions: self
                .parts
                .iter()
                .enumerate()
                .map(|(i, p)| PartitionInfo {
                    partition: i as i32,
                    low: p.low.load(Ordering::Acquire),
                    high: p.high.load(Ordering::Acquire),
                })
                .collect(),
        }
    }
}

enum WriteOp {
    /// Records for one or more topics and optionally a group's offsets, all in one atomic write
    /// (a publish is one part; a transaction several).
    Publish {
        parts: Vec<(String, Vec<Record>)>,
        commit: Option<(String, Vec<CommitOffset>)>,
        reply: oneshot::Sender<Result<Vec<Position>>>,
        /// Dropped only once the write landed (or failed): a transaction's group membership,
        /// so a member dropped while its write is queued leaves the group after it.
        hold: Option<Box<dyn std::any::Any + Send>>,
    },
    CreateTopic {
        spec: TopicSpec,
        reply: oneshot::Sender<Result<TopicInfo>>,
    },
    UpdateTopic {
        spec: TopicSpec,
        reply: oneshot::Sender<Result<TopicInfo>>,
    },
    Retention {
        now: i64,
        reply: oneshot::Sender<Result<u64>>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<()>>,
    },
}

/// The shared store. Cheap to clone through `Arc`.
pub(crate) struct Store {
    db: Database,
    meta: Keyspace,
    offsets: Keyspace,
    /// Unique-key claims: `<scope>\0<key>` -> hold end (ms, 8 bytes big-endian) and job id.
    unique: Keyspace,
    /// One claim at a time, so a check and its write are one step.
    unique_lock: std::sync::Mutex<()>,
    topics: RwLock<BTreeMap<String, Arc<TopicLog>>>,
    /// Bumped after every append and every group change; consumers wait on it.
    pub(crate) changes: watch::Sender<u64>,
    config: EmbeddedConfig,
    ops: std::sync::Mutex<Option<mpsc::Sender<WriteOp>>>,
    /// The first failed write, which every later one reports.
    health: Health,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.config.path)
            .finish_non_exhaustive()
    }
}

fn topic_meta_key(name: &str) -> Vec<u8> {
    [b"topic\0".as_slice(), name.as_bytes()].concat()
}

fn part_meta_key(name: &str, p: i32) -> Vec<u8> {
    [
        b"part\0".as_slice(),
        name.as_bytes(),
        b"\0",
        &p.to_be_bytes(),
    ]
    .concat()
}

fn offset_key(group: &str, topic: &str, p: i32) -> Vec<u8> {
    [
        group.as_bytes(),
        b"\0",
        topic.as_bytes(),
        b"\0",
        &p.to_be_bytes(),
    ]
    .concat()
}

fn encode_part(low: i64, high: i64, bytes: u64) -> [u8; 24] {
    let mut v = [0u8; 24];
    v[..8].copy_from_slice(&low.to_be_bytes());
    v[8..16].copy_from_slice(&high.to_be_bytes());
    v[16..].copy_from_slice(&bytes.to_be_bytes());
    v
}

fn keyspace_name(topic: &str) -> String {
    format!("t.{topic}")
}

mod writer;

impl Store {
    /// Opens (or creates) the store and starts its writer thread.
    pub(crate) fn open(config: EmbeddedConfig) -> Result<Arc<Store>> {
        std::fs::create_dir_all(&config.path)?;
        let db = Database::builder(&config.path).open().map_err(|e| {
            Error::Storage(format!(
                "cannot open the embedded log at {}: {e} (is another conveyor process using this data folder?)",
                config.path.display()
            ))
        })?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(storage)?;
        let offsets = db
            .keyspace("offsets", KeyspaceCreateOptions::default)
            .map_err(storage)?;
        let unique = db
            .keyspace("unique", KeyspaceCreateOptions::default)
            .map_err(storage)?;
        let mut topics = BTreeMap::new();
        for guard in meta.prefix(b"topic\0") {
            let (_, v) = guard.into_inner().map_err(storage)?;
            let spec: TopicSpec = serde_json::from_slice(&v)
                .map_err(|e| Error::Corrupt(format!("topic metadata: {e}")))?;
            let log = Self::load_topic(&db, &meta, spec)?;
            topics.insert(log.spec.name.clone(), Arc::new(log));
        }
        watermarks::check(
            &config.path,
            &watermarks::read(&config.path)?,
            &watermarks_of(&topics),
        )?;
        let (tx, rx) = mpsc::channel();
        let store = Arc::new(Store {
            db,
            meta,
            offsets,
            unique,
            unique_lock: std::sync::Mutex::new(()),
            topics: RwLock::new(topics),
            changes: watch::channel(0).0,
            health: Health::new(config.path.clone(), config.durability),
            config,
            ops: std::sync::Mutex::new(Some(tx)),
        });
        let writer = Arc::clone(&store);
        std::thread::Builder::new()
            .name("conveyor-embedded-writer".into())
            .spawn(move || writer.run_writer(rx))?;
        Ok(store)
    }

    fn load_topic(db: &Database, meta: &Keyspace, spec: TopicSpec) -> Result<TopicLog> {
        let ks = db
            .keyspace(&keyspace_name(&spec.name), KeyspaceCreateOptions::default)
            .map_err(storage)?;
        let mut parts = Vec::with_capacity(spec.partitions as usize);
        for p in 0..spec.partitions {
            let state = PartState::default();
            if let Some(v) = meta.get(part_meta_key(&spec.name, p)).map_err(storage)? {
                if v.len() == 24 {
                    state.low.store(
                        i64::from_be_bytes(v[..8].try_into().expect("8")),
                        Ordering::Relaxed,
                    );
                    state.high.store(
                        i64::from_be_bytes(v[8..16].try_into().expect("8")),
                        Ordering::Relaxed,
                    );
                    state.bytes.store(
                        u64::from_be_bytes(v[16..].try_into().expect("8")),
                        Ordering::Relaxed,
                    );
                }
            }
            parts.push(state);
        }
        Ok(TopicLog {
            spec,
            ks,
            parts,
            round_robin: AtomicU32::new(0),
        })
    }

    pub(crate) fn topic(&self, name: &str) -> Option<Arc<TopicLog>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    pub(crate) fn topic_or_err(&self, name: &str) -> Result<Arc<TopicLog>> {
        self.topic(name)
            .ok_or_else(|| Error::UnknownTopic(name.to_owned()))
    }

    pub(crate) fn list(&self) -> Result<Vec<TopicInfo>> {
        self.ensure_open()?;
        Ok(self
            .topics
            .read()
            .expect("topics lock")
            .values()
            .map(|t| t.info())
            .collect())
    }

    /// `Err(Closed)` once [`Store::shutdown`] ran.
    pub(crate) fn ensure_open(&self) -> Result<()> {
        match self.ops.lock().expect("ops lock").is_some() {
            true => Ok(()),
            false => Err(Error::Closed),
        }
    }

    /// `Err` once a write failed: fjall takes no more writes until the log is opened again (see
    /// [`Health`]). Reads go on.
    pub(crate) fn health(&self) -> Result<()> {
        self.health.check(&self.db)
    }

    fn send(&self, op: WriteOp) -> Result<()> {
        let guard = self.ops.lock().expect("ops lock");
        let tx = guard.as_ref().ok_or(Error::Closed)?;
        tx.send(op).map_err(|_| Error::Closed)
    }

    pub(crate) async fn create_topic(&self, spec: TopicSpec) -> Result<TopicInfo> {
        let spec = Self::supported(spec)?;
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::CreateTopic { spec, reply })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Adds partitions and changes retention of an existing topic.
    pub(crate) async fn update_topic(&self, spec: TopicSpec) -> Result<TopicInfo> {
        let spec = Self::supported(spec)?;
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::UpdateTopic { spec, reply })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Validates a spec and drops what does not apply to one copy on one machine (replication).
    pub(crate) fn supported(mut spec: TopicSpec) -> Result<TopicSpec> {
        spec.validate()?;
        if spec.cleanup_policy != CleanupPolicy::Delete {
            return Err(Error::Unsupported {
                backend: "the embedded backend".into(),
                what: format!(
                    "topic `{}`: cleanup_policy `{}` (it deletes by age and size but does not compact); use `delete` here, or the kafka backend",
                    spec.name, spec.cleanup_policy
                ),
            });
        }
        spec.replication_factor = None;
        spec.min_insync_replicas = None;
        Ok(spec)
    }

    pub(crate) async fn publish(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>> {
        if records.is_empty() {
            self.topic_or_err(topic)?;
            return Ok(Vec::new());
        }
        self.write(vec![(topic.to_owned(), records)], None, None)
            .await
    }

    /// Appends records to several topics and commits a group's offsets in one atomic write:
    /// all of it is stored or none. Positions in input order, part after part.
    pub(crate) async fn write(
        &self,
        parts: Vec<(String, Vec<Record>)>,
        commit: Option<(String, Vec<CommitOffset>)>,
        hold: Option<Box<dyn std::any::Any + Send>>,
    ) -> Result<Vec<Position>> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Publish {
            parts,
            commit,
            reply,
            hold,
        })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Runs retention now, as if the clock read `now` (milliseconds since the epoch).
    pub(crate) async fn retention(&self, now: i64) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Retention { now, reply })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    pub(crate) async fn shutdown(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        match self.send(WriteOp::Shutdown { reply }) {
            Err(Error::Closed) => return Ok(()),
            other => other?,
        }
        let result = rx.await.map_err(|_| Error::Closed)?;
        self.ops.lock().expect("ops lock").take();
        result
    }

    /// Reads up to `max` records of a partition from `offset` (clamped to the low watermark).
    pub(crate) fn read(
        &self,
        topic: &TopicLog,
        partition: i32,
        offset: i64,
        max: usize,
    ) -> Result<Vec<ConsumedRecord>> {
        let part = topic
            .parts
            .get(partition as usize)
            .ok_or_else(|| Error::UnknownPartition {
                topic: topic.spec.name.clone(),
                partition,
            })?;
        let high = part.high.load(Ordering::Acquire);
        let from = offset.max(part.low.load(Ordering::Acquire));
        let to = high.min(from.saturating_add(max as i64));
        if from >= to {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((to - from) as usize);
        for guard in topic
            .ks
            .range(log_key(partition, from)..log_key(partition, to))
        {
            let (k, v) = guard.into_inner().map_err(storage)?;
            let (_, offset) = parse_log_key(&k)?;
            out.push(decode(&topic.spec.name, partition, offset, Bytes::from(v))?);
        }
        Ok(out)
    }

    /// Records the current high watermarks once they are durable (see [`watermarks`]).
    fn record_watermarks(&self) {
        let marks = watermarks_of(&self.topics.read().expect("topics lock"));
        if self.config.durability == Durability::Os {
            if let Err(e) = self.db.persist(PersistMode::SyncAll) {
                self.health.write_failed(&e);
                tracing::warn!(error = %e, "cannot sync the journal; the high watermarks are recorded later");
                return;
            }
        }
        if let Err(e) = watermarks::write(&self.config.path, &marks) {
            tracing::warn!(error = %e, "cannot record the high watermarks; a damaged journal may go unnoticed until it works again");
        }
    }

    pub(crate) fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>> {
        Ok(self
            .committed_with_metadata(group, topic, partition)?
            .map(|(o, _)| o))
    }

    /// The committed offset and the metadata committed with it.
    pub(crate) fn committed_with_metadata(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<(i64, String)>> {
        let key = offset_key(group, topic, partition);
        let Some(offset) = self
            .offsets
            .get(&key)
            .map_err(storage)?
            .and_then(|v| v.as_ref().try_into().ok().map(i64::from_be_bytes))
        else {
            return Ok(None);
        };
        let metadata = self
            .offsets
            .get(metadata_key(&key))
            .map_err(storage)?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        Ok(Some((offset, metadata)))
    }

    /// Claims `key` in `scope` for `id` until `until_ms` unless another id holds it past
    /// `now_ms` (then returns that id and its hold). Durable as appends are.
    pub(crate) fn claim_unique(
        &self,
        scope: &str,
        key: &str,
        id: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<Option<(String, i64)>> {
        self.ensure_open()?;
        let _one = self.unique_lock.lock().unwrap_or_else(|e| e.into_inner());
        let k = [scope.as_bytes(), b"\0", key.as_bytes()].concat();
        if let Some(v) = self.unique.get(&k).map_err(storage)? {
            if v.len() >= 8 {
                let held = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
                let holder = String::from_utf8_lossy(&v[8..]).into_owned();
                if held > now_ms && holder != id {
                    return Ok(Some((holder, held)));
                }
            }
        }
        let value = [until_ms.to_be_bytes().as_slice(), id.as_bytes()].concat();
        let mut batch = self.db.batch().durability(self.persist_mode());
        batch.insert(&self.unique, k, value);
        batch.commit().map_err(|e| self.health.write_failed(&e))?;
        Ok(None)
    }

    /// Releases `id`'s claim on `key` in `scope` (another's is left alone).
    pub(crate) fn release_unique(&self, scope: &str, key: &str, id: &str) -> Result<()> {
        let _one = self.unique_lock.lock().unwrap_or_else(|e| e.into_inner());
        let k = [scope.as_bytes(), b"\0", key.as_bytes()].concat();
        let ours = self
            .unique
            .get(&k)
            .map_err(storage)?
            .is_some_and(|v| v.len() >= 8 && &v[8..] == id.as_bytes());
        if ours {
            let mut batch = self.db.batch().durability(self.persist_mode());
            batch.remove(&self.unique, k);
            batch.commit().map_err(|e| self.health.write_failed(&e))?;
        }
        Ok(())
    }

    pub(crate) fn commit(&self, group: &str, offsets: &[CommitOffset]) -> Result<()> {
        // written to the OS at least, so a crash repeats no more than what was in flight
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        for c in offsets {
            insert_commit(&mut batch, &self.offsets, group, c);
        }
        batch.commit().map_err(|e| self.health.write_failed(&e))
    }

    /// How a write is persisted before it is acknowledged. Never `None`: a batch committed
    /// without a persist mode stays in fjall's in-process journal buffer and is lost by a crash
    /// of the process, which `Durability::Os` promises to survive.
    fn persist_mode(&self) -> Option<PersistMode> {
        match self.config.durability {
            Durability::Os => Some(PersistMode::Buffer),
            Durability::Fsync => Some(PersistMode::SyncData),
        }
    }

    /// How many unique-key claims are kept.
    pub(crate) fn unique_claims(&self) -> Result<usize> {
        let mut n = 0;
        for guard in self.unique.iter() {
            guard.into_inner().map_err(storage)?;
            n += 1;
        }
        Ok(n)
    }
}

/// Most ended unique-key claims removed by one retention run.
const CLAIMS_PER_RUN: usize = 100_000;

/// The end of a stored claim's hold (ms since the epoch): its first 8 bytes.
fn claim_until(v: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// A commit as stored: the offset (8 bytes, big-endian) under its key, as before commit metadata
/// existed (so an older conveyor still reads it), and the metadata beside it.
fn insert_commit(
    batch: &mut fjall::OwnedWriteBatch,
    offsets: &Keyspace,
    group: &str,
    c: &CommitOffset,
) {
    let key = offset_key(group, &c.tp.topic, c.tp.partition);
    batch.insert(offsets, metadata_key(&key), c.metadata.as_bytes());
    batch.insert(offsets, key, c.next_offset.to_be_bytes());
}

fn metadata_key(offset_key: &[u8]) -> Vec<u8> {
    [offset_key, b"\0metadata"].concat()
}

/// How often the writer records the high watermarks while records are appended.
const WATERMARK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn watermarks_of(topics: &BTreeMap<String, Arc<TopicLog>>) -> watermarks::Watermarks {
    topics
        .iter()
        .map(|(name, log)| {
            let highs = log
                .parts
                .iter()
                .map(|p| p.high.load(Ordering::Acquire))
                .collect();
            (name.clone(), highs)
        })
        .collect()
}
