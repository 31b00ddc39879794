//! The scheduler: fires the ticks of cron schedules ([`crate::time::schedule`]), each tick once across
//! every conveyor process sharing a backend.
//!
//! **Election.** Every [`Scheduler`] joins the consumer group [`SCHEDULER_GROUP`] on the
//! one-partition topic [`SCHEDULER_TOPIC`]. The member that owns partition 0 is the scheduler;
//! the others only poll, ready to take over. The backend's group protocol is the election:
//! on Kafka a member that stops heartbeating loses the partition after the session timeout; on
//! the embedded backend (one process) the partition moves when a scheduler stops.
//!
//! **State in the commit.** After firing, the owner commits partition 0 with metadata saying up
//! to which time every tick was fired (`at`), which schedules it knew, and the own cursor of any
//! schedule whose publish keeps failing; it commits at least every `heartbeat` (1 s) otherwise.
//! A new owner reads it with [`Subscription::committed`] and carries on from there: a gap of at
//! most `grace` (60 s: a handover, a failover within the session timeout) is fired tick by tick,
//! late; a longer gap was downtime, and each schedule's `missed` policy applies to it (`skip`:
//! none of its ticks, `once`: the latest). Schedules the previous owner did not know (added while
//! every process was down) start at the new owner's start. A schedule put or changed while this
//! member fires counts from when it was put, whenever this member sees it (the control entry's
//! `at`; see `scheduler/change.rs`). The metadata is kept within the backends' 4,000 bytes: when
//! the names of all schedules do not fit, the list is left out (then every schedule counts as
//! known) and, beyond that, failing schedules' own cursors (they resume from `at`).
//!
//! **Limits.** The owner fires only the schedules within [`SchedulerOptions::limits`] (how many,
//! how many bytes, how many ticks a minute: [`crate::time::schedule::budget`]), taken in order, the
//! configuration's then the API's by name; one beyond them is skipped, with a warning, until
//! others make room. The API refuses a `PUT` past them already; this holds when two processes
//! take a `PUT` each at the same moment.
//!
//! **Exactly once.** A commit is fenced: only the owner's is accepted. Before the partition goes
//! to another member the backend waits on the scheduler's [`RevokeBarrier`], which returns once
//! the firing loop is between two passes and will fire no more; so two owners never fire at
//! once. What remains is a crash between publishing a tick and committing: the next owner fires
//! that tick again, as the same record (same message id, `dedup_key`, partition: see
//! [`Compiled::record`]), and the worker runs only the copy it saw first ([`crate::worker::dedup`]). A
//! worker that restarted in between runs it again: at-least-once in that window, as every job.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use conveyor_core::{
    Backend, CommitOffset, Error, Poll, Record, Result, RevokeBarrier, StartFrom, SubscribeOptions,
    Subscription, TopicPartition, TopicSpec,
};

use crate::time::control::Control;
use crate::time::schedule::{effective, unix_ms, Compiled, Due, Schedule, ScheduleLimits, Usage};

mod change;
mod handover;

use change::{definition, Change};
use handover::Handover;

/// The topic whose partition 0 elects the scheduler (nothing is written to it).
pub const SCHEDULER_TOPIC: &str = "conveyor.scheduler";
/// The consumer group of the schedulers.
pub const SCHEDULER_GROUP: &str = "conveyor.scheduler";
/// The longest wait between two passes (new API schedules are seen within about this).
const PASS: Duration = Duration::from_millis(250);
/// How long a schedule whose publish failed waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// How long a revocation waits for a pass under way.
const REVOKE_WAIT: Duration = Duration::from_secs(30);

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// A gap up to this long (a handover, a failover, a slow publish) is caught up tick by tick;
    /// a longer one is downtime, where each schedule's `missed` policy applies. Default: 60 s.
    pub grace: Duration,
    /// The owner commits its progress at least this often (a new owner's gap starts at the last
    /// commit). Default: 1 s.
    pub heartbeat: Duration,
    /// The consumer group. Default: [`SCHEDULER_GROUP`].
    pub group: String,
    /// The election topic. Default: [`SCHEDULER_TOPIC`].
    pub topic: String,
    /// How many schedules, of how many bytes and ticks a minute, are fired: those beyond are
    /// skipped, with a warning (see [`crate::time::schedule::budget`]). Default:
    /// [`ScheduleLimits::default`].
    pub limits: ScheduleLimits,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            grace: Duration::from_secs(60),
            heartbeat: Duration::from_secs(1),
            group: SCHEDULER_GROUP.into(),
            topic: SCHEDULER_TOPIC.into(),
            limits: ScheduleLimits::default(),
        }
    }
}

/// What a scheduler did, for tests and logs.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    /// Ticks published.
    pub fired: AtomicU64,
    /// Ticks of a downtime that were not fired (the `missed` policy).
    pub missed: AtomicU64,
    /// Publishes that failed (their ticks are tried again).
    pub failed: AtomicU64,
    /// Times this member became the scheduler.
    pub elected: AtomicU64,
    /// Whether this member is the scheduler now.
    pub owner: AtomicBool,
    /// The latest a tick was published after its time, in milliseconds.
    pub max_late_ms: AtomicU64,
}

/// A member of the scheduler group; the one elected fires the ticks. See the module docs.
#[derive(Debug)]
pub struct Scheduler {
    backend: Arc<dyn Backend>,
    configured: Vec<Schedule>,
    control: Option<Control>,
    options: SchedulerOptions,
    stats: Arc<SchedulerStats>,
}

impl Scheduler {
    /// A scheduler of `configured` schedules (they are validated as it runs: one that does not
    /// compile is skipped with a warning) and those of the control log.
    pub fn new(backend: Arc<dyn Backend>, configured: Vec<Schedule>) -> Self {
        Scheduler {
            backend,
            configured,
            control: None,
            options: SchedulerOptions::default(),
            stats: Arc::default(),
        }
    }

    /// Reads API schedules from this control log instead of opening one at start.
    pub fn control(mut self, control: Control) -> Self {
        self.control = Some(control);
        self
    }

    /// Sets the options.
    pub fn options(mut self, options: SchedulerOptions) -> Self {
        self.options = options;
        self
    }

    /// The counters.
    pub fn stats(&self) -> Arc<SchedulerStats> {
        Arc::clone(&self.stats)
    }

    /// Joins the election and, whenever elected, fires ticks, until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) -> Result<()> {
        let o = &self.options;
        let mut spec = TopicSpec::new(o.topic.clone(), 1);
        spec.retention_ms = None;
        match self.backend.create_topic(&spec).await {
            Ok(_) | Err(Error::TopicConflict { .. }) => {}
            Err(e) => return Err(e),
        }
        let control = match self.control.clone() {
            Some(c) => c,
            None => Control::open(Arc::clone(&self.backend)).await?,
        };
        let tp = TopicPartition::new(o.topic.clone(), 0);
        let gate = Arc::new(Gate::default());
        let barrier = {
            let (gate, tp) = (Arc::clone(&gate), tp.clone());
            RevokeBarrier(Arc::new(move |revoked: &[TopicPartition]| {
                if revoked.contains(&tp) {
                    gate.revoke();
                }
            }))
        };
        let mut sub = self
            .backend
            .subscribe(SubscribeOptions {
                group: o.group.clone(),
                topics: vec![o.topic.clone()],
                start: StartFrom::Earliest,
                on_revoke: Some(barrier),
            })
            .await?;
        let mut run = Run {
            s: &self,
            control,
            tp,
            compiled: HashMap::new(),
            partitions: HashMap::new(),
            over_limit: Default::default(),
        };
        let mut owner: Option<Owner> = None;
        tokio::pin!(shutdown);
        loop {
            let wait = owner.as_ref().map_or(PASS, Owner::wait);
            let polled = tokio::select! {
                () = &mut shutdown => break,
                polled = sub.poll(64, wait) => polled,
            };
            match polled {
                Ok(Poll::Records(records)) => {
                    if let (Some(ow), Some(last)) = (&mut owner, records.last()) {
                        ow.position = ow.position.max(last.offset + 1);
                    }
                }
                Ok(Poll::Rebalance { revoked, assigned }) => {
                    if revoked.contains(&run.tp) && owner.take().is_some() {
                        self.stats.owner.store(false, Ordering::SeqCst);
                        tracing::info!("no longer the scheduler: its partition was revoked (another process takes over, or this one once it rejoins the group)");
                    }
                    if assigned.contains(&run.tp) {
                        gate.assigned();
                        owner = Some(Owner::default());
                        self.stats.elected.fetch_add(1, Ordering::SeqCst);
                        self.stats.owner.store(true, Ordering::SeqCst);
                        tracing::info!("elected scheduler: this process fires the ticks");
                    }
                }
                Ok(Poll::Idle) => {}
                Err(Error::Closed) => return Err(Error::Closed),
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler poll failed; retrying in 1 s");
                    tokio::time::sleep(RETRY).await;
                }
            }
            if let Some(ow) = &mut owner {
                if !gate.begin() {
                    continue;
                }
                let kept = run.pass(ow, sub.as_mut()).await;
                gate.end();
                if !kept {
                    owner = None;
                    self.stats.owner.store(false, Ordering::SeqCst);
                }
            }
        }
        if let Some(ow) = &mut owner {
            run.commit(ow, sub.as_mut()).await;
        }
        sub.leave(crate::LEAVE_TIMEOUT).await;
        self.stats.owner.store(false, Ordering::SeqCst);
        Ok(())
    }
}

/// Lets a revocation wait until no pass is under way, and stops later passes until the partition
/// is assigned again.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    firing: bool,
    revoking: bool,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a pass, unless a revocation began.
    fn begin(&self) -> bool {
        let mut s = self.lock();
        s.firing = !s.revoking;
        s.firing
    }

    fn end(&self) {
        self.lock().firing = false;
        self.changed.notify_all();
    }

    /// Called by the backend before partition 0 goes away: no pass starts from now on, and this
    /// returns once the one under way (if any) finished.
    fn revoke(&self) {
        let mut s = self.lock();
        s.revoking = true;
        let (s, timeout) = self
            .changed
            .wait_timeout_while(s, REVOKE_WAIT, |s| s.firing)
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() && s.firing {
            tracing::warn!("a scheduler pass is still publishing at revocation; its tick may fire twice (the worker drops the second copy)");
        }
    }

    fn assigned(&self) {
        self.lock().revoking = false;
    }
}

/// One schedule's progress while this member is the scheduler.
#[derive(Debug)]
struct Cursor {
    /// The schedule as of the last pass (its expression and time zone decide the ticks).
    compiled: Compiled,
    /// Every tick up to here was fired or given up.
    at: i64,
    /// After a failed publish: not tried again before.
    retry_at: Option<Instant>,
    /// A change of expression or time zone whose ticks are not fired yet.
    change: Option<Change>,
}

/// The state of an elected member.
#[derive(Debug, Default)]
struct Owner {
    /// The previous owner's progress, once read (`Some(None)`: there was none).
    handover: Option<Option<Handover>>,
    /// Whether a pass ran (the handover applies to the first pass only).
    started: bool,
    /// The time of the first pass (Unix ms): ticks before it were the previous owner's.
    began: i64,
    /// The time of the last pass (Unix ms).
    last_pass: i64,
    cursors: HashMap<String, Cursor>,
    /// The offset committed (the topic stays empty unless someone writes to it).
    position: i64,
    last_commit: Option<Instant>,
    /// The next tick of any schedule (Unix ms), after the last pass.
    next_tick: Option<i64>,
}

impl Owner {
    /// How long to poll before the next pass: until the next tick, at most [`PASS`].
    fn wait(&self) -> Duration {
        match self.next_tick {
            Some(t) => {
                let left = t - unix_ms(SystemTime::now()) + 1;
                Duration::from_millis(left.clamp(0, PASS.as_millis() as i64) as u64)
            }
            None => PASS,
        }
    }

    /// The progress to commit: `at` is the time of the last pass.
    fn handover(&self, now: i64) -> Handover {
        let mut known: Vec<String> = self.cursors.keys().cloned().collect();
        known.sort();
        Handover {
            at: now,
            known: Some(known),
            behind: self
                .cursors
                .iter()
                .filter(|(_, c)| c.at < now)
                .map(|(n, c)| (n.clone(), c.at))
                .collect(),
        }
    }
}

struct Run<'a> {
    s: &'a Scheduler,
    control: Control,
    tp: TopicPartition,
    /// Compiled schedules by name, with the schedule they were compiled from.
    compiled: HashMap<String, (Schedule, Option<Compiled>)>,
    /// Partition counts of the target topics, refreshed after a minute or a failed publish.
    partitions: HashMap<String, (i32, Instant)>,
    /// Schedules skipped for the limits (warned once each while they are).
    over_limit: std::collections::HashSet<String>,
}

impl Run<'_> {
    /// Fires what is due. Returns false when the partition turned out to be gone.
    async fn pass(&mut self, ow: &mut Owner, sub: &mut dyn Subscription) -> bool {
        if ow.handover.is_none() {
            match sub.committed(std::slice::from_ref(&self.tp)).await {
                Ok(c) => {
                    let c = c.into_iter().next();
                    ow.position = c.as_ref().and_then(|c| c.next_offset).unwrap_or(0);
                    let metadata = c.map(|c| c.metadata).unwrap_or_default();
                    ow.handover = Some(serde_json::from_str::<Handover>(&metadata).ok());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the previous scheduler's progress; trying again");
                    return true;
                }
            }
        }
        let now = unix_ms(SystemTime::now());
        let grace = i64::try_from(self.s.options.grace.as_millis()).unwrap_or(i64::MAX);
        if !ow.started {
            ow.began = now;
        }
        // when each API schedule was put: a change takes effect from then (`change.rs`), never
        // before this member began firing nor more than the grace ago
        let floor = (now - grace).max(ow.began).min(now);
        let (api, mut put_at): (Vec<Schedule>, HashMap<String, i64>) = {
            let api = self.control.schedules_put_at();
            let put_at = api
                .iter()
                .filter_map(|(s, at)| at.map(|at| (s.name.clone(), at.clamp(floor, now))))
                .collect();
            (api.into_iter().map(|(s, _)| s).collect(), put_at)
        };
        put_at.retain(|name, _| !self.s.configured.iter().any(|c| &c.name == name));
        let schedules = effective(&self.s.configured, &api);
        let mut batches: BTreeMap<String, Vec<(String, i64, Record)>> = BTreeMap::new();
        let mut live = Vec::with_capacity(schedules.len());
        let mut usage = Usage::default();
        let mut over_limit = std::collections::HashSet::new();
        ow.next_tick = None;
        'schedules: for schedule in schedules {
            let Some(c) = self.compile(&schedule) else {
                continue;
            };
            // the limits, in order: a schedule that does not fit is not fired
            let with = usage.with(c.cost());
            if let Err(e) = self.s.options.limits.check(with) {
                if !self.over_limit.contains(&schedule.name) {
                    tracing::warn!(schedule = %schedule.name, limit = e.key, "a schedule beyond the scheduler's limits is not fired: {e}");
                }
                over_limit.insert(schedule.name.clone());
                continue;
            }
            usage = with;
            live.push(schedule.name.clone());
            let put_at = put_at.get(&schedule.name).copied();
            let cursor = match ow.cursors.entry(schedule.name.clone()) {
                Entry::Occupied(e) => {
                    let cursor = e.into_mut();
                    let changed = definition(&cursor.compiled) != definition(&c);
                    let old = std::mem::replace(&mut cursor.compiled, c);
                    if changed && cursor.change.is_none() {
                        // without a time of its own the change counts from the last pass
                        let at = put_at.unwrap_or(cursor.at.clamp(floor, now));
                        cursor.change = Some(Change {
                            old,
                            fired: cursor.at,
                            at,
                        });
                    }
                    cursor
                }
                Entry::Vacant(e) => {
                    let at = match (&ow.handover, ow.started) {
                        (Some(Some(h)), false) => h.cursor(&schedule.name, now),
                        (_, false) => now,
                        // put while this member fires: from when it was put
                        (_, true) => put_at.unwrap_or(now),
                    };
                    e.insert(Cursor {
                        compiled: c,
                        at,
                        retry_at: None,
                        change: None,
                    })
                }
            };
            if cursor.retry_at.is_some_and(|r| r > Instant::now()) {
                continue;
            }
            let c = &cursor.compiled;
            let (before, after) = match &cursor.change {
                Some(change) => change.due(c, cursor.at, now, grace),
                None => (Due::default(), c.due(cursor.at, now, grace)),
            };
            for due in [&before, &after] {
                if due.downtime && (due.missed > 0 || !due.fire.is_empty()) {
                    tracing::info!(schedule = %schedule.name, missed = due.missed, fired = due.fire.len(), policy = schedule.missed.as_str(), gap_ms = now - cursor.at, "no scheduler ran for longer than the grace: the downtime's ticks follow the schedule's `missed` policy");
                }
                self.s
                    .stats
                    .missed
                    .fetch_add(due.missed as u64, Ordering::Relaxed);
                if due.missed > 0 {
                    crate::observation::metrics::events::ticks(
                        &schedule.name,
                        "missed",
                        due.missed as u64,
                    );
                }
            }
            let next = c.next_after(now);
            if before.fire.is_empty() && after.fire.is_empty() {
                cursor.at = cursor.at.max(now);
                cursor.retry_at = None;
                cursor.change = None;
            } else {
                // the old expression's ticks go as the old schedule's jobs
                let old = cursor.change.as_ref().map(|ch| ch.old.clone());
                let parts = [(old, before.fire), (Some(c.clone()), after.fire)];
                let mut records = Vec::new();
                for (compiled, ticks) in parts {
                    let Some(compiled) = compiled.filter(|_| !ticks.is_empty()) else {
                        continue;
                    };
                    let topic = compiled.schedule().topic.clone();
                    let partitions = match self.partitions(&topic).await {
                        Ok(n) => n,
                        Err(e) => {
                            let cursor = ow.cursors.get_mut(&schedule.name).expect("a cursor");
                            if cursor.retry_at.is_none() {
                                tracing::warn!(schedule = %schedule.name, topic = %topic, error = %e, "cannot fire: the topic cannot be described; trying again every second");
                            }
                            cursor.retry_at = Some(Instant::now() + RETRY);
                            continue 'schedules;
                        }
                    };
                    for tick in ticks {
                        records.push((topic.clone(), tick, compiled.record(tick, partitions)));
                    }
                }
                for (topic, tick, record) in records {
                    batches
                        .entry(topic)
                        .or_default()
                        .push((schedule.name.clone(), tick, record));
                }
            }
            ow.next_tick = match (ow.next_tick, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        ow.cursors.retain(|name, _| live.contains(name));
        self.over_limit = over_limit;
        let fired = !batches.is_empty();
        // per schedule: whether every batch holding its ticks was published
        let mut published: HashMap<String, bool> = HashMap::new();
        for (topic, batch) in batches {
            let (ticks, records): (Vec<(String, i64)>, Vec<Record>) =
                batch.into_iter().map(|(n, t, r)| ((n, t), r)).unzip();
            match self.s.backend.publish(&topic, records).await {
                Ok(_) => {
                    let done = unix_ms(SystemTime::now());
                    for (name, tick) in ticks {
                        published.entry(name.clone()).or_insert(true);
                        let late = (done - tick).max(0) as u64;
                        self.s.stats.max_late_ms.fetch_max(late, Ordering::Relaxed);
                        self.s.stats.fired.fetch_add(1, Ordering::Relaxed);
                        crate::observation::metrics::events::ticks(&name, "fired", 1);
                        tracing::debug!(schedule = %name, tick, late_ms = late, "fired");
                    }
                }
                Err(e) => {
                    self.s.stats.failed.fetch_add(1, Ordering::Relaxed);
                    self.partitions.remove(&topic);
                    let mut first = false;
                    for (name, _) in &ticks {
                        published.insert(name.clone(), false);
                        if let Some(cursor) = ow.cursors.get_mut(name) {
                            first |= cursor.retry_at.is_none();
                            cursor.retry_at = Some(Instant::now() + RETRY);
                        }
                    }
                    // warned once per failing streak, retried every second
                    match first {
                        true => {
                            tracing::warn!(topic, error = %e, ticks = ticks.len(), "cannot publish ticks; trying again every second (past the grace they count as missed)")
                        }
                        false => {
                            tracing::debug!(topic, error = %e, "publishing ticks failed again")
                        }
                    }
                }
            }
        }
        for (name, ok) in published {
            if let Some(cursor) = ow.cursors.get_mut(&name).filter(|_| ok) {
                cursor.at = cursor.at.max(now);
                cursor.retry_at = None;
                cursor.change = None;
            }
        }
        ow.started = true;
        ow.last_pass = now;
        let heartbeat = ow
            .last_commit
            .is_none_or(|t| t.elapsed() >= self.s.options.heartbeat);
        if fired || heartbeat {
            return self.commit_at(ow, sub, now).await;
        }
        true
    }

    /// Commits the progress of the last pass (at shutdown).
    async fn commit(&mut self, ow: &mut Owner, sub: &mut dyn Subscription) {
        if ow.started {
            let at = ow.last_pass;
            self.commit_at(ow, sub, at).await;
        }
    }

    async fn commit_at(&mut self, ow: &mut Owner, sub: &mut dyn Subscription, at: i64) -> bool {
        let metadata = ow.handover(at).encode();
        let offset = CommitOffset::new(self.tp.clone(), ow.position).with_metadata(metadata);
        match sub.commit(&[offset]).await {
            Ok(()) => {
                ow.last_commit = Some(Instant::now());
                true
            }
            Err(Error::NotAssigned { .. }) => {
                tracing::info!("the scheduler partition moved to another process");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot commit the scheduler's progress; trying again");
                true
            }
        }
    }

    /// The compiled schedule, compiled again only when it changed; `None` (warned once) when it
    /// does not validate.
    fn compile(&mut self, schedule: &Schedule) -> Option<Compiled> {
        if let Some((s, c)) = self.compiled.get(&schedule.name) {
            if s == schedule {
                return c.clone();
            }
        }
        let c = match schedule.compile() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(schedule = %schedule.name, error = %e, "skipping a schedule that does not validate");
                None
            }
        };
        self.compiled
            .insert(schedule.name.clone(), (schedule.clone(), c.clone()));
        c
    }

    async fn partitions(&mut self, topic: &str) -> Result<i32> {
        if let Some((n, at)) = self.partitions.get(topic) {
            if at.elapsed() < Duration::from_secs(60) {
                return Ok(*n);
            }
        }
        let info = self
            .s
            .backend
            .describe_topic(topic)
            .await?
            .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))?;
        let n = info.partition_count();
        self.partitions
            .insert(topic.to_owned(), (n, Instant::now()));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_waits_for_the_pass_under_way_and_stops_the_next() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let gate = Arc::new(Gate::default());
        assert!(gate.begin());
        let ended = Arc::new(AtomicBool::new(false));
        let (g, e) = (Arc::clone(&gate), Arc::clone(&ended));
        let revoked = std::thread::spawn(move || {
            g.revoke();
            e.load(Ordering::SeqCst)
        });
        // Wait until the revocation is under way (it sets `revoking` under the lock, then waits),
        // not for a length of time: a slow machine may start the thread late.
        while !gate.lock().revoking {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !revoked.is_finished(),
            "revoke returned while a pass was under way"
        );
        ended.store(true, Ordering::SeqCst);
        gate.end();
        assert!(
            revoked.join().unwrap(),
            "revoke returned before the pass ended"
        );
        assert!(!gate.begin(), "no pass after a revocation");
        gate.assigned();
        assert!(gate.begin());
    }
}
