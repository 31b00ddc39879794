//! The waitlist platform of seed 002 (`../shared/seeds/002_*.txt`): job topics for the work a
//! signup causes (emails, rewards, position recalculation) and event-sourcing topics, kept a
//! year, that record what happened. A [`projection`] folds the events into each campaign's
//! signups and positions; it is kept live by a consumer group and can be rebuilt at any time by
//! replaying the events from the start, which gives the same projection.
//!
//! | topic | partitions | retention | what |
//! |---|---|---|---|
//! | `waitlist.email.verification` | 10 | 7 days | job: send the verification email |
//! | `waitlist.email.welcome` | 10 | 7 days | job: send the welcome email |
//! | `waitlist.reward.delivery` | 10 | 30 days | job: credit the referrer of a verified user |
//! | `waitlist.position.recalculation` | 5 | 7 days | job: recompute a campaign's positions |
//! | `waitlist.events.user.signup` | 10 | 1 year | event: a user signed up |
//! | `waitlist.events.user.verified` | 10 | 1 year | event: a user verified their email |
//! | `waitlist.events.referral.created` | 10 | 1 year | event: a verified user was referred |
//! | `waitlist.events.reward.earned` | 10 | 1 year | event: a referrer earned a reward |
//!
//! Every event is keyed by its campaign, so one campaign's events of a topic are in one
//! partition, in order, both live and in a replay. Every event and job has a message id derived
//! from what it is about (`verified:u00042`), so an event appended twice by a retried handler
//! (at-least-once) is folded once.
//!
//! The flow: [`Waitlist::signup`] appends `user.signup` and enqueues `email.verification`; its
//! handler (group `email-workers`) sends the email and, when the user clicks the link
//! ([`clicks_link`]: all but every tenth user), appends `user.verified`, for a referred user
//! `referral.created` and a `reward.delivery` job, and enqueues `email.welcome` and
//! `position.recalculation`. The `reward.delivery` handler (group `reward-workers`) appends
//! `reward.earned`.

pub mod projection;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor_core::{Backend, Error, TopicSpec};
use conveyor_runtime::{Client, JobError, NewJob, Worker};
use serde::{Deserialize, Serialize};

use projection::Projection;

/// The job topics' and event topics' names (without a namespace).
pub mod topics {
    /// Job: send the verification email.
    pub const EMAIL_VERIFICATION: &str = "waitlist.email.verification";
    /// Job: send the welcome email.
    pub const EMAIL_WELCOME: &str = "waitlist.email.welcome";
    /// Job: credit a referrer.
    pub const REWARD_DELIVERY: &str = "waitlist.reward.delivery";
    /// Job: recompute a campaign's positions.
    pub const POSITION_RECALCULATION: &str = "waitlist.position.recalculation";
    /// Event: a user signed up.
    pub const USER_SIGNUP: &str = "waitlist.events.user.signup";
    /// Event: a user verified their email.
    pub const USER_VERIFIED: &str = "waitlist.events.user.verified";
    /// Event: a verified user was referred.
    pub const REFERRAL_CREATED: &str = "waitlist.events.referral.created";
    /// Event: a referrer earned a reward.
    pub const REWARD_EARNED: &str = "waitlist.events.reward.earned";
    /// The event-sourcing topics.
    pub const EVENTS: [&str; 4] = [USER_SIGNUP, USER_VERIFIED, REFERRAL_CREATED, REWARD_EARNED];
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// `user.signup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signup {
    /// The campaign (the waitlist).
    pub campaign: String,
    /// The user.
    pub user: String,
    /// The user's address.
    pub email: String,
    /// Who referred the user.
    pub referred_by: Option<String>,
}

/// `user.verified`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// The campaign.
    pub campaign: String,
    /// The user.
    pub user: String,
}

/// `referral.created`, and the `reward.delivery` job's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    /// The campaign.
    pub campaign: String,
    /// The user who referred.
    pub referrer: String,
    /// The user referred (verified).
    pub referred: String,
}

/// `reward.earned`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewardEarned {
    /// The campaign.
    pub campaign: String,
    /// The user rewarded.
    pub user: String,
    /// What for, e.g. `credit:u00042`.
    pub reward: String,
}

/// The `position.recalculation` job's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recalculate {
    /// The campaign.
    pub campaign: String,
}

/// The simulated user: everyone but every tenth user clicks the verification link.
pub fn clicks_link(user: &str) -> bool {
    user.trim_start_matches('u')
        .parse::<u64>()
        .map_or(true, |i| i % 10 != 9)
}

/// The signups `from..to` of the demo: three campaigns; every second user from the fourth on
/// was referred by the user three before (in the same campaign).
pub fn plan(from: usize, to: usize) -> Vec<Signup> {
    (from..to)
        .map(|i| Signup {
            campaign: format!("campaign-{}", i % 3),
            user: format!("u{i:05}"),
            email: format!("user{i}@example.com"),
            referred_by: (i >= 3 && i % 2 == 0).then(|| format!("u{:05}", i - 3)),
        })
        .collect()
}

/// How many events the signups `0..to` of [`plan`] lead to, once every job ran.
pub fn expected_events(to: usize) -> usize {
    plan(0, to)
        .iter()
        .map(|s| match (clicks_link(&s.user), s.referred_by.is_some()) {
            (false, _) => 1,
            (true, false) => 2,
            (true, true) => 4, // signup, verified, referral, reward
        })
        .sum()
}

/// Names with a namespace prefix, so tests on a shared broker use their own topics and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// Prepended to every topic and group name (default: none).
    pub namespace: String,
}

impl Names {
    /// `base` in this namespace.
    pub fn of(&self, base: &str) -> String {
        format!("{}{base}", self.namespace)
    }

    /// The event topics in this namespace.
    pub fn events(&self) -> Vec<String> {
        topics::EVENTS.iter().map(|t| self.of(t)).collect()
    }

    /// Every topic, with the seed's partitions and retention.
    pub fn specs(&self) -> Vec<TopicSpec> {
        use topics::*;
        let spec = |name: &str, partitions: i32, days: i64| {
            let mut s = TopicSpec::new(self.of(name), partitions);
            s.retention_ms = Some(days * DAY_MS);
            s
        };
        vec![
            spec(EMAIL_VERIFICATION, 10, 7),
            spec(EMAIL_WELCOME, 10, 7),
            spec(REWARD_DELIVERY, 10, 30),
            spec(POSITION_RECALCULATION, 5, 7),
            spec(USER_SIGNUP, 10, 365),
            spec(USER_VERIFIED, 10, 365),
            spec(REFERRAL_CREATED, 10, 365),
            spec(REWARD_EARNED, 10, 365),
        ]
    }
}

/// What the job handlers counted (the emails they would have sent).
#[derive(Debug, Default)]
pub struct Sent {
    /// Verification emails.
    pub verification: std::sync::atomic::AtomicU64,
    /// Welcome emails.
    pub welcome: std::sync::atomic::AtomicU64,
    /// Position recalculations.
    pub recalculations: std::sync::atomic::AtomicU64,
}

/// The application: its topics, its client and its workers.
#[derive(Debug, Clone)]
pub struct Waitlist {
    backend: Arc<dyn Backend>,
    client: Client,
    names: Names,
    /// What the handlers did.
    pub sent: Arc<Sent>,
}

impl Waitlist {
    /// Creates the topics when missing.
    pub async fn open(backend: Arc<dyn Backend>, names: Names) -> conveyor_core::Result<Self> {
        for spec in names.specs() {
            match backend.create_topic(&spec).await {
                Ok(_) | Err(Error::TopicConflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Waitlist {
            client: Client::new(Arc::clone(&backend)).with_producer("waitlist"),
            backend,
            names,
            sent: Arc::default(),
        })
    }

    /// The names it uses.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// A signup: the `user.signup` event, then the `email.verification` job.
    pub async fn signup(&self, s: &Signup) -> conveyor_core::Result<()> {
        let event = NewJob::json("user.signup", s)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?
            .with_key(s.campaign.clone())
            .with_id(format!("signup:{}", s.user));
        self.client
            .enqueue(&self.names.of(topics::USER_SIGNUP), event)
            .await?;
        let job = NewJob::json("email.verification", s)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?
            .with_key(format!("{}:{}", s.campaign, s.user))
            .with_id(format!("verify:{}", s.user));
        self.client
            .enqueue(&self.names.of(topics::EMAIL_VERIFICATION), job)
            .await?;
        Ok(())
    }

    /// The job workers: `email-workers`, `reward-workers` and `position-workers`. The
    /// recalculation reads the live projection.
    pub fn workers(&self, live: Arc<Mutex<Projection>>) -> Vec<Worker> {
        let n = &self.names;
        let (client, names, sent) = (self.client.clone(), n.clone(), Arc::clone(&self.sent));
        let emails = Worker::builder(
            Arc::clone(&self.backend),
            n.of("email-workers"),
            [
                n.of(topics::EMAIL_VERIFICATION),
                n.of(topics::EMAIL_WELCOME),
            ],
        )
        .concurrency(32)
        .job("email.verification", move |s: Signup, _job| {
            let (client, names, sent) = (client.clone(), names.clone(), Arc::clone(&sent));
            async move {
                sent.verification
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !clicks_link(&s.user) {
                    return Ok::<(), JobError>(());
                }
                let append = |topic: &str, job_type: &str, id: String, payload: &dyn Payload| {
                    let job = payload
                        .job(job_type)
                        .map(|j| j.with_key(s.campaign.clone()).with_id(id));
                    let (client, topic) = (client.clone(), names.of(topic));
                    async move { client.enqueue(&topic, job?).await.map(|_| ()) }
                };
                let verified = Verified {
                    campaign: s.campaign.clone(),
                    user: s.user.clone(),
                };
                append(
                    topics::USER_VERIFIED,
                    "user.verified",
                    format!("verified:{}", s.user),
                    &verified,
                )
                .await?;
                if let Some(referrer) = &s.referred_by {
                    let referral = Referral {
                        campaign: s.campaign.clone(),
                        referrer: referrer.clone(),
                        referred: s.user.clone(),
                    };
                    append(
                        topics::REFERRAL_CREATED,
                        "referral.created",
                        format!("referral:{}", s.user),
                        &referral,
                    )
                    .await?;
                    append(
                        topics::REWARD_DELIVERY,
                        "reward.delivery",
                        format!("reward-job:{}", s.user),
                        &referral,
                    )
                    .await?;
                }
                append(
                    topics::EMAIL_WELCOME,
                    "email.welcome",
                    format!("welcome:{}", s.user),
                    &s,
                )
                .await?;
                let recalc = Recalculate {
                    campaign: s.campaign.clone(),
                };
                append(
                    topics::POSITION_RECALCULATION,
                    "position.recalculation",
                    format!("recalc:{}", s.user),
                    &recalc,
                )
                .await?;
                Ok(())
            }
        })
        .job("email.welcome", {
            let sent = Arc::clone(&self.sent);
            move |_s: Signup, _job| {
                let sent = Arc::clone(&sent);
                async move {
                    sent.welcome
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok::<(), JobError>(())
                }
            }
        })
        .build();

        let (client, names) = (self.client.clone(), n.clone());
        let rewards = Worker::builder(
            Arc::clone(&self.backend),
            n.of("reward-workers"),
            [n.of(topics::REWARD_DELIVERY)],
        )
        .concurrency(8)
        .job("reward.delivery", move |r: Referral, _job| {
            let (client, names) = (client.clone(), names.clone());
            async move {
                let earned = RewardEarned {
                    campaign: r.campaign.clone(),
                    user: r.referrer.clone(),
                    reward: format!("credit:{}", r.referred),
                };
                let event = NewJob::json("reward.earned", &earned)
                    .map_err(JobError::fail)?
                    .with_key(r.campaign.clone())
                    .with_id(format!("reward:{}", r.referred));
                client
                    .enqueue(&names.of(topics::REWARD_EARNED), event)
                    .await?;
                Ok::<(), JobError>(())
            }
        })
        .build();

        let sent = Arc::clone(&self.sent);
        let positions = Worker::builder(
            Arc::clone(&self.backend),
            n.of("position-workers"),
            [n.of(topics::POSITION_RECALCULATION)],
        )
        .job("position.recalculation", move |r: Recalculate, _job| {
            let (live, sent) = (Arc::clone(&live), Arc::clone(&sent));
            async move {
                let top = live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .positions(&r.campaign)
                    .into_iter()
                    .take(3)
                    .collect::<Vec<_>>();
                tracing::debug!(campaign = r.campaign, ?top, "positions recalculated");
                sent.recalculations
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok::<(), JobError>(())
            }
        })
        .build();
        vec![emails, rewards, positions]
    }
}

/// A payload that becomes a JSON job of some type.
trait Payload: Sync {
    fn job(&self, job_type: &str) -> conveyor_core::Result<NewJob>;
}

impl<T: Serialize + Sync> Payload for T {
    fn job(&self, job_type: &str) -> conveyor_core::Result<NewJob> {
        NewJob::json(job_type, self).map_err(|e| Error::InvalidArgument(e.to_string()))
    }
}

/// What a run of the demo ended with.
#[derive(Debug, Clone)]
pub struct Report {
    /// The live projection at the end.
    pub live: Projection,
    /// The projection rebuilt by replaying every event from the start.
    pub rebuilt: Projection,
    /// Signups made in this run.
    pub signed_up: usize,
}

/// One run of the application: opens the topics and the live projection in `dir`, starts the
/// workers, signs up `signups` more users (after those of earlier runs), waits until every
/// job's events are in the live projection (at most `wait`), stops, keeps the live
/// projection, and rebuilds the projection from the events to compare.
pub async fn run(
    backend: Arc<dyn Backend>,
    names: Names,
    dir: &std::path::Path,
    signups: usize,
    wait: Duration,
) -> anyhow::Result<Report> {
    let app = Waitlist::open(Arc::clone(&backend), names.clone()).await?;
    let live = projection::LiveProjection::open(dir, &names)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for worker in app
        .workers(live.state())
        .into_iter()
        .chain([live.worker(Arc::clone(&backend))])
    {
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(worker.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })));
    }
    let from = live.snapshot().signups();
    for s in plan(from, from + signups) {
        app.signup(&s).await?;
    }
    let expected = expected_events(from + signups);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let folded = live.snapshot().events.len();
        if folded >= expected {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("after {wait:?} the live projection holds {folded} of {expected} events; are the workers running?");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    for t in tasks {
        t.await??;
    }
    let kept = live.close()?;
    let rebuilt = projection::rebuild(backend.as_ref(), &names).await?;
    Ok(Report {
        live: kept,
        rebuilt,
        signed_up: signups,
    })
}
