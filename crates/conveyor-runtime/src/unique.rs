//! Unique jobs, worker side: the ledger of unique keys that jobs hold, shared through the backend.
//!
//! A job with a `unique_key` header holds the key (per group and topic) until its
//! `unique_until`. Before it runs, the worker reads the ledger topic [`UNIQUE_TOPIC`] (one
//! partition, every conveyor process of the backend writes to it) to its end: when another job
//! holds the key and this one was enqueued before that hold ends, this one is a duplicate and is
//! dropped without running (`WorkerStats::unique_dropped`, and a warning naming both ids);
//! otherwise the worker writes this job's hold to the ledger, durably, and runs it. Records with
//! the same key share a partition (the client keys a unique job by its unique key unless it has
//! a key), and a partition has one owner at a time, so two workers never decide on one key at
//! once; a new owner reads what the previous one wrote. The same check runs on every backend: on
//! the embedded backend duplicates are already refused at enqueue (`409 duplicate_job`), and
//! this also covers records other producers wrote.

use std::collections::HashMap;
use std::sync::Arc;

use conveyor_core::{Backend, Error, Record, Result, TopicSpec};
use serde::{Deserialize, Serialize};

/// The ledger topic.
pub const UNIQUE_TOPIC: &str = "conveyor.unique";

/// How long the ledger keeps a hold: the longest hold a job may ask for (366 days) and a margin.
const RETENTION_MS: i64 = 400 * 24 * 3600 * 1000;

#[derive(Debug, Serialize, Deserialize)]
struct Hold {
    group: String,
    topic: String,
    key: String,
    id: String,
    until: i64,
}

/// What the ledger says about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It holds the key now (or already did): run it.
    Run,
    /// Another job holds the key: drop this one.
    Duplicate {
        /// The message id of the job holding the key.
        holder: String,
        /// When its hold ends (ms since the epoch).
        until: i64,
    },
}

#[derive(Debug, Default)]
struct State {
    /// (group, topic, key) -> (job id, hold end).
    holds: HashMap<(String, String, String), (String, i64)>,
    next: i64,
}

/// See the [module docs](self).
#[derive(Debug)]
pub struct UniqueLedger {
    backend: Arc<dyn Backend>,
    state: tokio::sync::Mutex<State>,
}

impl UniqueLedger {
    /// Creates the ledger topic when missing.
    pub async fn open(backend: Arc<dyn Backend>) -> Result<Self> {
        let mut spec = TopicSpec::new(UNIQUE_TOPIC, 1);
        spec.retention_ms = Some(RETENTION_MS);
        match backend.create_topic(&spec).await {
            Ok(_) | Err(Error::TopicConflict { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(UniqueLedger {
            backend,
            state: tokio::sync::Mutex::default(),
        })
    }

    /// Decides whether job `id` of `group` on `topic`, enqueued at `enqueued_ms` with a hold on
    /// `key` until `until_ms`, runs; when it does, its hold is in the ledger before this returns.
    pub async fn admit(
        &self,
        group: &str,
        topic: &str,
        key: &str,
        id: &str,
        enqueued_ms: i64,
        until_ms: i64,
    ) -> Result<Verdict> {
        let mut state = self.state.lock().await;
        self.read_on(&mut state).await?;
        let k = (group.to_owned(), topic.to_owned(), key.to_owned());
        if let Some((holder, held)) = state.holds.get(&k) {
            if holder == id {
                return Ok(Verdict::Run);
            }
            if *held > enqueued_ms {
                return Ok(Verdict::Duplicate {
                    holder: holder.clone(),
                    until: *held,
                });
            }
        }
        let hold = Hold {
            group: group.to_owned(),
            topic: topic.to_owned(),
            key: key.to_owned(),
            id: id.to_owned(),
            until: until_ms,
        };
        let value = serde_json::to_vec(&hold).expect("a hold serializes");
        let at = self
            .backend
            .publish(UNIQUE_TOPIC, vec![Record::new(value)])
            .await?;
        state.holds.insert(k, (id.to_owned(), until_ms));
        state.next = state.next.max(at[0].offset + 1);
        Ok(Verdict::Run)
    }

    /// Reads the holds written since the last read (by any process).
    async fn read_on(&self, state: &mut State) -> Result<()> {
        loop {
            let records = self
                .backend
                .fetch(UNIQUE_TOPIC, 0, state.next, 1000)
                .await?;
            let Some(last) = records.last().map(|r| r.offset) else {
                return Ok(());
            };
            for r in records {
                match serde_json::from_slice::<Hold>(&r.value) {
                    Ok(h) => {
                        state
                            .holds
                            .insert((h.group, h.topic, h.key), (h.id, h.until));
                    }
                    Err(e) => {
                        tracing::warn!(offset = r.offset, error = %e, "ignoring a unique-ledger record that is not a hold")
                    }
                }
            }
            state.next = last + 1;
        }
    }
}
