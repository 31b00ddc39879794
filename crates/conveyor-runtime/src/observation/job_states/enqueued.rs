//! The enqueue side of job lookup: a `waiting` state for each job enqueued, written by a
//! background task in batches (whatever gathered while the previous publish ran, at most
//! [`BATCH`] records a publish), so an enqueue pays a channel send, not a write.
//!
//! The records are keyed `<id>/enqueued`, apart from the workers' `<id>`: compaction keeps
//! both, and [`super::JobIndex`] ranks a worker's state above `waiting` whichever was written
//! last (the worker may finish a job before its `waiting` record is written). At most
//! [`MAX_QUEUED`] wait for the writer; beyond that (the log refuses writes for a while) the
//! newest are dropped with a warning: those jobs show up at their first worker state.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use conveyor_core::Backend;
use tokio::sync::mpsc;

use super::{now_ms, JobState, Place, StateKind, JOBS_TOPIC};

/// The most `waiting` records waiting for the writer.
pub const MAX_QUEUED: usize = 100_000;

/// The most records one publish carries.
pub const BATCH: usize = 2_000;

/// Writes `waiting` states for enqueued jobs; cheap to clone.
#[derive(Debug, Clone)]
pub struct EnqueueLog {
    tx: mpsc::Sender<JobState>,
    /// Topics whose jobs are not tracked (`job_states = false`).
    off: Arc<HashSet<String>>,
    /// Records dropped because the queue was full.
    pub dropped: Arc<AtomicU64>,
}

impl EnqueueLog {
    /// Starts the writer; jobs of the topics in `off` are not tracked.
    pub fn start(backend: Arc<dyn Backend>, off: HashSet<String>) -> Self {
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        tokio::spawn(write_loop(backend, rx));
        EnqueueLog {
            tx,
            off: Arc::new(off),
            dropped: Arc::default(),
        }
    }

    /// Whether jobs of `topic` are tracked.
    pub fn tracks(&self, topic: &str) -> bool {
        !self.off.contains(topic)
    }

    /// Notes that the job `id` was enqueued at `place`, due at `due` (Unix ms) when given.
    pub fn enqueued(&self, id: &str, place: Place, due: Option<i64>) {
        if !self.tracks(&place.topic) {
            return;
        }
        let now = now_ms();
        let until = due.filter(|d| *d > now);
        let state = JobState {
            id: id.to_owned(),
            state: match until {
                Some(_) => StateKind::Delayed,
                None => StateKind::Waiting,
            },
            place,
            group: None,
            attempts: 0,
            enqueued_at: Some(now),
            started_at: None,
            finished_at: None,
            until,
            last_error: None,
            reason: None,
            dead_letter: None,
            updated_at: now,
        };
        if self.tx.try_send(state).is_err() && self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                "{JOBS_TOPIC} cannot be written fast enough: `waiting` states are dropped (those jobs show up in lookups once a worker takes them)"
            );
        }
    }
}

async fn write_loop(backend: Arc<dyn Backend>, mut rx: mpsc::Receiver<JobState>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut packed = None;
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let packed = *match &packed {
            Some(p) => p,
            None => packed.insert(super::packs(&*backend).await),
        };
        let records = super::encode(&batch, packed, "/enqueued");
        batch.clear();
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            match backend.publish(JOBS_TOPIC, records.clone()).await {
                Ok(_) => break,
                Err(conveyor_core::Error::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write `waiting` job states; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }
}
