//! The waitlist's read model: per campaign, its signups in order and each user's state
//! (verified, referrals, rewards), from which positions are computed. [`Projection::apply`]
//! folds one event; the result does not depend on how the four event topics interleave (each
//! event only adds to its own fields), and a campaign's signups are in one partition of
//! `user.signup`, in order, so any replay of the same events gives the same projection.
//!
//! Two ways to get it:
//! - **live**: [`LiveProjection`], a worker in group `event-processor.<generation>` folding
//!   events as they arrive, kept in `projection.json` when it stops cleanly and picked up
//!   from there on the next start. After an unclean stop (a crash: the file says it was not
//!   closed) the generation goes up, so a fresh group replays the events from the start;
//! - **rebuilt**: [`rebuild`], every event read with `Backend::fetch` from offset 0 of every
//!   partition, outside any group.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use conveyor_core::Backend;
use conveyor_runtime::{Job, JobError, Worker};
use serde::{Deserialize, Serialize};

use super::{Names, Referral, RewardEarned, Signup, Verified};

/// Places a verified user moves up per verified referral.
pub const REFERRAL_BOOST: usize = 5;

/// One user's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The address (empty until the signup event is folded).
    pub email: String,
    /// Who referred the user.
    pub referred_by: Option<String>,
    /// Whether the user verified their email.
    pub verified: bool,
    /// Verified users this user referred.
    pub referrals: usize,
    /// Rewards earned.
    pub rewards: BTreeSet<String>,
}

/// One campaign (waitlist).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    /// User ids in signup order.
    pub signups: Vec<String>,
    /// Users by id.
    pub users: BTreeMap<String, User>,
}

/// Every campaign, and the ids of the events folded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projection {
    /// Campaigns by id.
    pub campaigns: BTreeMap<String, Campaign>,
    /// The message ids of the events folded: an event delivered twice is folded once.
    pub events: BTreeSet<String>,
}

impl Projection {
    /// Folds one event (its message id, job type and JSON payload). Returns whether it was new.
    pub fn apply(&mut self, id: &str, job_type: &str, payload: &[u8]) -> Result<bool, String> {
        if self.events.contains(id) {
            return Ok(false);
        }
        let bad = |e: serde_json::Error| format!("event {id} ({job_type}): {e}");
        match job_type {
            "user.signup" => {
                let s: Signup = serde_json::from_slice(payload).map_err(bad)?;
                let c = self.campaigns.entry(s.campaign).or_default();
                c.signups.push(s.user.clone());
                let u = c.users.entry(s.user).or_default();
                u.email = s.email;
                u.referred_by = s.referred_by;
            }
            "user.verified" => {
                let v: Verified = serde_json::from_slice(payload).map_err(bad)?;
                self.user(&v.campaign, &v.user).verified = true;
            }
            "referral.created" => {
                let r: Referral = serde_json::from_slice(payload).map_err(bad)?;
                self.user(&r.campaign, &r.referrer).referrals += 1;
            }
            "reward.earned" => {
                let r: RewardEarned = serde_json::from_slice(payload).map_err(bad)?;
                self.user(&r.campaign, &r.user).rewards.insert(r.reward);
            }
            other => return Err(format!("event {id}: unknown event type `{other}`")),
        }
        self.events.insert(id.to_owned());
        Ok(true)
    }

    fn user(&mut self, campaign: &str, user: &str) -> &mut User {
        self.campaigns
            .entry(campaign.to_owned())
            .or_default()
            .users
            .entry(user.to_owned())
            .or_default()
    }

    /// Signups over every campaign.
    pub fn signups(&self) -> usize {
        self.campaigns.values().map(|c| c.signups.len()).sum()
    }

    /// A campaign's verified users with their positions (1 is first): signup order, each user
    /// moving up [`REFERRAL_BOOST`] places per verified referral; ties in signup order.
    pub fn positions(&self, campaign: &str) -> Vec<(String, usize)> {
        let Some(c) = self.campaigns.get(campaign) else {
            return Vec::new();
        };
        let mut ranked: Vec<(i64, usize, &String)> = c
            .signups
            .iter()
            .enumerate()
            .filter(|(_, u)| c.users.get(*u).is_some_and(|u| u.verified))
            .map(|(i, u)| {
                let boost = (c.users[u].referrals * REFERRAL_BOOST) as i64;
                (i as i64 - boost, i, u)
            })
            .collect();
        ranked.sort();
        ranked
            .into_iter()
            .enumerate()
            .map(|(place, (_, _, u))| (u.clone(), place + 1))
            .collect()
    }

    /// Counts: signups, verified users, referrals, rewards.
    pub fn summary(&self) -> (usize, usize, usize, usize) {
        let users = || self.campaigns.values().flat_map(|c| c.users.values());
        (
            self.signups(),
            users().filter(|u| u.verified).count(),
            users().map(|u| u.referrals).sum(),
            users().map(|u| u.rewards.len()).sum(),
        )
    }
}

/// Folds one consumed event record into `p`.
fn fold(p: &mut Projection, id: &str, job_type: &str, payload: &[u8]) -> Result<(), String> {
    p.apply(id, job_type, payload).map(|_| ())
}

/// The projection rebuilt from the events alone: every partition of every event topic read
/// from offset 0 (the oldest record kept) to its end, outside any consumer group.
pub async fn rebuild(backend: &dyn Backend, names: &Names) -> anyhow::Result<Projection> {
    let mut p = Projection::default();
    for topic in names.events() {
        let info = backend
            .describe_topic(&topic)
            .await?
            .ok_or_else(|| anyhow::anyhow!("event topic `{topic}` does not exist"))?;
        for (partition, _) in info.partitions.iter().enumerate() {
            let partition = partition as i32;
            let mut offset = 0;
            loop {
                let records = backend.fetch(&topic, partition, offset, 500).await?;
                let Some(last) = records.last().map(|r| r.offset) else {
                    break;
                };
                for r in &records {
                    let meta = conveyor_core::JobMeta::from_headers(&r.headers);
                    let id = meta.message_id.as_deref().unwrap_or("");
                    let job_type = meta.job_type.as_deref().unwrap_or("");
                    fold(&mut p, id, job_type, &r.value).map_err(anyhow::Error::msg)?;
                }
                offset = last + 1;
            }
        }
    }
    Ok(p)
}

/// What `projection.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// The live group's generation (`event-processor.<generation>`).
    generation: u64,
    /// Whether the projection was kept by a clean stop.
    clean: bool,
    projection: Projection,
}

/// The live projection: folded by a worker as events arrive, kept in a file across clean
/// restarts.
#[derive(Debug)]
pub struct LiveProjection {
    path: PathBuf,
    generation: u64,
    names: Names,
    state: Arc<Mutex<Projection>>,
}

impl LiveProjection {
    /// Opens `dir/projection.json`: a cleanly kept projection goes on from where it was; after
    /// a crash (or on a first start) a new generation starts empty and replays from the start.
    pub fn open(dir: &Path, names: &Names) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("projection.json");
        let saved: Saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}; delete it to rebuild", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(e.into()),
        };
        let (generation, projection) = match saved.clean {
            true => (saved.generation, saved.projection),
            false => (saved.generation + 1, Projection::default()),
        };
        let live = LiveProjection {
            path,
            generation,
            names: names.clone(),
            state: Arc::new(Mutex::new(projection)),
        };
        live.save(false)?;
        Ok(live)
    }

    /// The consumer group folding the events.
    pub fn group(&self) -> String {
        self.names
            .of(&format!("event-processor.{}", self.generation))
    }

    /// The shared state (for readers such as the position recalculation).
    pub fn state(&self) -> Arc<Mutex<Projection>> {
        Arc::clone(&self.state)
    }

    /// A copy of the projection now.
    pub fn snapshot(&self) -> Projection {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The worker folding events into it (one handler per event type).
    pub fn worker(&self, backend: Arc<dyn Backend>) -> Worker {
        let mut builder = Worker::builder(backend, self.group(), self.names.events());
        for event in [
            "user.signup",
            "user.verified",
            "referral.created",
            "reward.earned",
        ] {
            let state = Arc::clone(&self.state);
            builder = builder.handler(
                event,
                conveyor_runtime::handler_fn(move |job: Job| {
                    let state = Arc::clone(&state);
                    async move {
                        let id = job.id().unwrap_or("").to_owned();
                        let mut p = state.lock().unwrap_or_else(|e| e.into_inner());
                        fold(&mut p, &id, job.job_type(), job.payload()).map_err(JobError::fail)
                    }
                }),
            );
        }
        builder.build()
    }

    /// Keeps the projection as cleanly stopped (call once its worker stopped); returns it.
    pub fn close(self) -> anyhow::Result<Projection> {
        self.save(true)?;
        Ok(self.snapshot())
    }

    fn save(&self, clean: bool) -> anyhow::Result<()> {
        let saved = Saved {
            generation: self.generation,
            clean,
            projection: self.snapshot(),
        };
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&saved)?)?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}
