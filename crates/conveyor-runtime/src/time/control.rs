//! The control log: cancellations, pauses and API-managed schedules, shared by every conveyor
//! process on a backend.
//!
//! A one-partition topic, [`CONTROL_TOPIC`], kept forever, holds one JSON record per command:
//! `{"kind":"cancel","id":…}`, `{"kind":"pause","group":…,"topic":…}`,
//! `{"kind":"resume",…}`, `{"kind":"put_schedule","schedule":{…},"at":…}` (`at`: when it was
//! put, Unix ms; optional),
//! `{"kind":"delete_schedule","name":…}`. Each process reads it from the start when it opens it
//! and then every [`REFRESH`], folding the records in order into the set of cancelled job ids,
//! of paused (group, topic) pairs and of schedules by name. So a command outlives restarts and reaches every process of every
//! group; it takes effect in other processes within about one refresh interval. Any Kafka tool
//! can read the topic; any producer writing the same JSON is obeyed, but not a record carrying a
//! job's headers (a job some way in wrote to the topic, as a schedule on `conveyor.control`
//! could before schedules refused conveyor's own topics: see [`crate::entry_log`]). A forged
//! command could drop a job that was acknowledged (`cancel`), stall a group (`pause`) or fire
//! jobs (`put_schedule`); no way in writes jobs to `conveyor.*` topics, and a schedule naming
//! one is skipped by the scheduler.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use conveyor_core::{Backend, Error, Position, Record, Result, TopicSpec};
use serde::{Deserialize, Serialize};

use crate::time::schedule::Schedule;

/// The control topic.
pub const CONTROL_TOPIC: &str = "conveyor.control";

/// How often a process reads new control records.
pub const REFRESH: Duration = Duration::from_millis(250);

/// One command in the control log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ControlEntry {
    /// Do not run the job with this message id (a job that already ran is not affected).
    Cancel {
        /// The job's message id.
        id: String,
    },
    /// Stop starting jobs of `topic` in `group`.
    Pause {
        /// The consumer group.
        group: String,
        /// The topic.
        topic: String,
    },
    /// Start jobs of `topic` in `group` again.
    Resume {
        /// The consumer group.
        group: String,
        /// The topic.
        topic: String,
    },
    /// Create or replace the schedule of this name (`PUT /v1/schedules/{name}`).
    PutSchedule {
        /// The schedule.
        schedule: Schedule,
        /// When it was put (Unix ms): a changed expression takes effect from then, whenever the
        /// scheduler reads it (see [`crate::time::scheduler`]). Entries without it take effect when
        /// the scheduler reads them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<i64>,
    },
    /// Delete the schedule of this name (`DELETE /v1/schedules/{name}`).
    DeleteSchedule {
        /// The schedule's name.
        name: String,
    },
}

impl ControlEntry {
    /// Creates or replaces `schedule`, from now on.
    pub fn put_schedule(schedule: Schedule) -> Self {
        ControlEntry::PutSchedule {
            schedule,
            at: Some(crate::time::schedule::unix_ms(std::time::SystemTime::now())),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    cancelled: HashSet<String>,
    paused: HashSet<(String, String)>,
    /// By name: the schedule, and when it was put (when the entry says).
    schedules: BTreeMap<String, (Schedule, Option<i64>)>,
    /// The next control record to read.
    next: i64,
}

impl State {
    fn apply(&mut self, entry: ControlEntry) {
        match entry {
            ControlEntry::Cancel { id } => {
                self.cancelled.insert(id);
            }
            ControlEntry::Pause { group, topic } => {
                self.paused.insert((group, topic));
            }
            ControlEntry::Resume { group, topic } => {
                self.paused.remove(&(group, topic));
            }
            ControlEntry::PutSchedule { schedule, at } => {
                self.schedules.insert(schedule.name.clone(), (schedule, at));
            }
            ControlEntry::DeleteSchedule { name } => {
                self.schedules.remove(&name);
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    backend: Arc<dyn Backend>,
    state: RwLock<State>,
    /// One reader at a time, so records are folded once and in order.
    reading: tokio::sync::Mutex<()>,
}

/// A process's view of the control log; cheap to clone, refreshed in the background while any
/// clone lives.
#[derive(Debug, Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

impl Control {
    /// Creates the control topic if needed, reads it to its end and starts the background refresh.
    pub async fn open(backend: Arc<dyn Backend>) -> Result<Self> {
        let mut spec = TopicSpec::new(CONTROL_TOPIC, 1);
        spec.retention_ms = None;
        match backend.create_topic(&spec).await {
            Ok(_) | Err(Error::TopicConflict { .. }) => {}
            Err(e) => return Err(e),
        }
        let control = Control {
            inner: Arc::new(Inner {
                backend,
                state: RwLock::default(),
                reading: tokio::sync::Mutex::new(()),
            }),
        };
        control.refresh().await?;
        let weak = Arc::downgrade(&control.inner);
        tokio::spawn(refresh_loop(weak));
        Ok(control)
    }

    /// Appends a command; returns once it is durable (and applied to this view). Appends at
    /// the same time share their reads: one that waited for another's read finds its command
    /// already applied (on Kafka a read costs a fetch, so a burst of cancellations would
    /// otherwise queue one read each behind the others).
    pub async fn append(&self, entry: &ControlEntry) -> Result<Position> {
        let value = serde_json::to_vec(entry).expect("a control entry serializes");
        let at = self
            .inner
            .backend
            .publish(CONTROL_TOPIC, vec![Record::new(value)])
            .await?;
        refresh_past(&self.inner, Some(at[0].offset)).await?;
        Ok(at[0])
    }

    /// Whether the job with this message id was cancelled.
    pub fn is_cancelled(&self, id: &str) -> bool {
        self.read().cancelled.contains(id)
    }

    /// Whether `group` is paused on `topic`.
    pub fn is_paused(&self, group: &str, topic: &str) -> bool {
        self.read()
            .paused
            .contains(&(group.to_owned(), topic.to_owned()))
    }

    /// The topics `group` is paused on, sorted.
    pub fn paused_topics(&self, group: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .read()
            .paused
            .iter()
            .filter(|(g, _)| g == group)
            .map(|(_, t)| t.clone())
            .collect();
        v.sort();
        v
    }

    /// The schedules put through the API and not deleted, by name (as stored: the scheduler
    /// skips, with a warning, one that does not validate).
    pub fn schedules(&self) -> Vec<Schedule> {
        self.read()
            .schedules
            .values()
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Like [`Control::schedules`], each with when it was last put (Unix ms; `None` when its
    /// entry does not say).
    pub fn schedules_put_at(&self) -> Vec<(Schedule, Option<i64>)> {
        self.read().schedules.values().cloned().collect()
    }

    /// The API schedule of this name.
    pub fn schedule(&self, name: &str) -> Option<Schedule> {
        self.read().schedules.get(name).map(|(s, _)| s.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the control records written since the last read.
    pub async fn refresh(&self) -> Result<()> {
        refresh(&self.inner).await
    }
}

async fn refresh(inner: &Inner) -> Result<()> {
    refresh_past(inner, None).await
}

/// Reads the records written since the last read; with `past`, only if the view has not read
/// that offset yet, and then at least up to it.
async fn refresh_past(inner: &Inner, past: Option<i64>) -> Result<()> {
    let _one = inner.reading.lock().await;
    let next = || inner.state.read().unwrap_or_else(|e| e.into_inner()).next;
    if past.is_some_and(|o| next() > o) {
        return Ok(());
    }
    // to the end of the log, then (a read that came back short) up to `past` at least
    for end in [None, past.map(|o| o + 1)] {
        if end.is_some_and(|end| next() >= end) {
            break;
        }
        crate::entry_log::read_entries::<ControlEntry>(
            &*inner.backend,
            CONTROL_TOPIC,
            next(),
            end,
            500,
            "a control command",
            |entries, next| {
                let mut state = inner.state.write().unwrap_or_else(|e| e.into_inner());
                for entry in entries {
                    state.apply(entry);
                }
                state.next = next;
            },
        )
        .await?;
    }
    Ok(())
}

async fn refresh_loop(weak: Weak<Inner>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if let Err(e) = refresh(&inner).await {
            if matches!(e, Error::Closed) {
                return;
            }
            tracing::debug!(error = %e, "cannot read the control log; trying again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::schedule::{Missed, Schedule};

    /// A command that reached the control log as a job — a schedule's tick, or a replayed dead
    /// letter, as those ways in wrote them before they refused `conveyor.*` — is not obeyed;
    /// one written as conveyor (or an operator's tool) writes commands, without job headers, is.
    #[tokio::test]
    async fn a_job_in_the_control_log_is_not_a_command() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(
            conveyor_embedded::EmbeddedBackend::open(conveyor_embedded::EmbeddedConfig::new(
                dir.path(),
            ))
            .unwrap(),
        );
        let control = Control::open(Arc::clone(&backend)).await.unwrap();
        let pause = |topic: &str| {
            serde_json::to_value(ControlEntry::Pause {
                group: "g".into(),
                topic: topic.into(),
            })
            .unwrap()
        };
        let tick = Schedule {
            name: "forge".into(),
            cron: "* * * * * *".into(),
            timezone: "UTC".into(),
            topic: "anywhere".into(),
            job_type: "pause".into(),
            payload: pause("by-a-schedule"),
            key: None,
            missed: Missed::Skip,
        }
        .compile()
        .unwrap()
        .record(1_767_225_600_000, 1);
        let replayed = Record::new(pause("by-a-replay").to_string())
            .with_header("attempt", "1")
            .with_header("replayed_from", "emails.dlq/0/7");
        let genuine = Record::new(pause("by-an-operator").to_string());
        backend
            .publish(CONTROL_TOPIC, vec![tick, replayed, genuine])
            .await
            .unwrap();
        control.refresh().await.unwrap();
        assert_eq!(control.paused_topics("g"), ["by-an-operator"]);
    }
}
