//! The reading side of job lookup: [`JOBS_TOPIC`] folded into memory, the last state per job,
//! refreshed in the background and before each lookup, with an index by state for listings.
//!
//! A worker's state always replaces the one before it; a `waiting` record (written by the API
//! at enqueue) only fills in a job no worker has written yet. Memory is bounded by a count of
//! jobs ([`DEFAULT_MAX_JOBS`]): beyond it the jobs that finished longest ago are forgotten
//! first (a lookup of one then answers `404`, as after the topic's retention).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use conveyor_core::{Backend, Error, Result};

use super::{JobState, StateKind, JOBS_TOPIC};

/// The default bound of the jobs a [`JobIndex`] keeps: 1,000,000 (about 300 MB at most).
pub const DEFAULT_MAX_JOBS: usize = 1_000_000;

/// How often the index reads what was written since.
const REFRESH: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
struct State {
    next: i64,
    jobs: HashMap<String, JobState>,
    by_state: HashMap<StateKind, BTreeSet<String>>,
    /// Finished jobs, oldest first (an id may appear again after it changed: checked).
    finished: VecDeque<String>,
    max_jobs: usize,
}

impl State {
    fn apply(&mut self, s: JobState) {
        if let Some(old) = self.jobs.get(&s.id) {
            // the enqueue's record (keyed `<id>/enqueued`, no group) never replaces a
            // worker's, whichever was written last
            if s.group.is_none() && old.group.is_some() {
                return;
            }
            // nor does a state of lower rank (a late `running`, a job run again after a crash)
            if s.rank() < old.rank() {
                return;
            }
            if let Some(set) = self.by_state.get_mut(&old.state) {
                set.remove(&s.id);
            }
        }
        self.by_state
            .entry(s.state)
            .or_default()
            .insert(s.id.clone());
        if s.state.is_final() {
            self.finished.push_back(s.id.clone());
        }
        self.jobs.insert(s.id.clone(), s);
        while self.jobs.len() > self.max_jobs {
            let Some(id) = self.finished.pop_front() else {
                break;
            };
            if self.jobs.get(&id).is_some_and(|j| j.state.is_final()) {
                let gone = self.jobs.remove(&id).expect("checked");
                if let Some(set) = self.by_state.get_mut(&gone.state) {
                    set.remove(&id);
                }
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    backend: Arc<dyn Backend>,
    state: RwLock<State>,
    /// One reader at a time; holds when the last read reached the end.
    reading: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// A page of jobs in one state.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The jobs, by id.
    pub jobs: Vec<JobState>,
    /// Where the next page starts (`None`: this was the last).
    pub next: Option<String>,
}

/// The jobs' last states, read from [`JOBS_TOPIC`]; cheap to clone, refreshed in the
/// background while any clone lives.
#[derive(Debug, Clone)]
pub struct JobIndex {
    inner: Arc<Inner>,
}

impl JobIndex {
    /// Creates the topic when missing, reads it to its end and starts the background refresh.
    pub async fn open(backend: Arc<dyn Backend>, max_jobs: usize) -> Result<Self> {
        super::ensure_topic(&backend).await?;
        let index = JobIndex {
            inner: Arc::new(Inner {
                backend,
                state: RwLock::new(State {
                    max_jobs: max_jobs.max(1),
                    ..Default::default()
                }),
                reading: tokio::sync::Mutex::new(None),
            }),
        };
        index.refresh().await?;
        tokio::spawn(refresh_loop(Arc::downgrade(&index.inner)));
        Ok(index)
    }

    /// Reads the states written since the last read.
    pub async fn refresh(&self) -> Result<()> {
        refresh(&self.inner, Duration::ZERO).await
    }

    /// Reads the states written since the last read, unless a read reached the end less than
    /// `fresh` ago (lookups arriving together share one read: on Kafka a read to the end is
    /// a fetch round trip).
    pub async fn refresh_within(&self, fresh: Duration) -> Result<()> {
        refresh(&self.inner, fresh).await
    }

    /// The job's last state (`None`: no state of it is known).
    pub fn get(&self, id: &str) -> Option<JobState> {
        self.read().jobs.get(id).cloned()
    }

    /// How many jobs the index holds.
    pub fn len(&self) -> usize {
        self.read().jobs.len()
    }

    /// Whether the index holds no job.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` jobs in `state` (of `topic`, when given), by id, after the id `after`.
    pub fn list(
        &self,
        state: StateKind,
        topic: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> ListPage {
        let st = self.read();
        let Some(ids) = st.by_state.get(&state) else {
            return ListPage {
                jobs: Vec::new(),
                next: None,
            };
        };
        let range = match after {
            Some(a) => {
                ids.range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => ids.range::<str, _>(..),
        };
        let mut jobs = Vec::new();
        let mut more = false;
        for id in range {
            let Some(j) = st.jobs.get(id) else { continue };
            if topic.is_some_and(|t| t != j.place.topic) {
                continue;
            }
            if jobs.len() == limit {
                more = true;
                break;
            }
            jobs.push(j.clone());
        }
        let next = more.then(|| jobs.last().map(|j| j.id.clone())).flatten();
        ListPage { jobs, next }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }
}

async fn refresh(inner: &Inner, fresh: Duration) -> Result<()> {
    let mut last = inner.reading.lock().await;
    if !fresh.is_zero() && last.is_some_and(|at| at.elapsed() < fresh) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let next = inner.state.read().unwrap_or_else(|e| e.into_inner()).next;
    // up to the end as it is now: workers writing states faster than one reader fetches them
    // must not keep a refresh (and every lookup waiting on it) going for ever
    let end = inner
        .backend
        .describe_topic(JOBS_TOPIC)
        .await?
        .and_then(|t| t.partitions.first().map(|p| p.high))
        .unwrap_or(next);
    if end <= next {
        *last = Some(started);
        return Ok(());
    }
    crate::entry_log::read_entries::<super::Entry>(
        &*inner.backend,
        JOBS_TOPIC,
        next,
        Some(end),
        2_000,
        "a job state",
        |entries, next| {
            let mut state = inner.state.write().unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                match entry {
                    super::Entry::One(s) => state.apply(*s),
                    super::Entry::Many(v) => v.into_iter().for_each(|s| state.apply(s)),
                }
            }
            state.next = next;
        },
    )
    .await?;
    *last = Some(started);
    Ok(())
}

async fn refresh_loop(weak: Weak<Inner>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if let Err(e) = refresh(&inner, Duration::ZERO).await {
            if matches!(e, Error::Closed) {
                return;
            }
            tracing::debug!(error = %e, "cannot read the job states; trying again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::job_states::Place;

    fn state(id: &str, kind: StateKind, at: i64) -> JobState {
        let group = (kind != StateKind::Waiting).then(|| "g".to_owned());
        JobState {
            id: id.into(),
            state: kind,
            place: Place {
                topic: "t".into(),
                partition: 0,
                offset: 1,
            },
            group,
            attempts: 0,
            enqueued_at: None,
            started_at: None,
            finished_at: None,
            until: None,
            last_error: None,
            reason: None,
            dead_letter: None,
            updated_at: at,
        }
    }

    /// A `waiting` record written after a worker's state does not undo it; the count bound
    /// forgets the jobs that finished first.
    #[test]
    fn waiting_never_replaces_a_worker_state_and_finished_jobs_go_first() {
        let mut s = State {
            max_jobs: 3,
            ..Default::default()
        };
        s.apply(state("a", StateKind::Succeeded, 1));
        s.apply(state("a", StateKind::Waiting, 2));
        assert_eq!(s.jobs["a"].state, StateKind::Succeeded);
        s.apply(state("b", StateKind::Running, 3));
        s.apply(state("c", StateKind::Waiting, 4));
        s.apply(state("d", StateKind::Dead, 5));
        assert_eq!(s.jobs.len(), 3);
        assert!(!s.jobs.contains_key("a"), "the oldest finished job went");
        assert!(s.by_state[&StateKind::Succeeded].is_empty());
        assert!(s.by_state[&StateKind::Running].contains("b"));
    }
}
