//! The multi-agent system of seed 003 (Laddr, moved from Redis pub/sub to Kafka) on conveyor:
//! one task topic per agent (`laddr.tasks.<agent>`), served by the consumer group
//! `laddr-<agent>-workers` (start more processes of an agent to scale it: they share the group's
//! partitions), and a shared responses topic, `laddr.responses`, that carries every reply.
//!
//! Agents talk by request/reply ([`conveyor_runtime::Client::request`]): the coordinator, given a
//! query, asks the researcher for notes, then the writer for a draft from those notes, and
//! answers with both. Every process's client uses `laddr.responses` as its reply topic
//! ([`Client::with_reply_topic`]), as the seed does: each process reads all of it (in a group of
//! its own) and takes only the correlation ids it waits for, so a reply reaches the process
//! that asked whichever process answered. The agents' "work" is deterministic text built from
//! the query, so a test can check each answer belongs to its question.
//!
//! A sub-request's message id is derived from the coordinator's job (`<job id>/research`), so
//! a retried coordinator job asks again under the same id and a reply to its first attempt
//! still counts.

use std::sync::Arc;
use std::time::Duration;

use conveyor_core::{Backend, Error, Result, TopicSpec};
use conveyor_runtime::{json_handler, Client, Job, JobError, NewJob, Worker};
use serde::{Deserialize, Serialize};

/// The agents.
pub const AGENTS: [&str; 3] = ["coordinator", "researcher", "writer"];

/// How long an agent waits for another agent's reply.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Names with a namespace prefix, so tests on a shared broker use topics and groups of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// Prepended to every topic and group name (default: none).
    pub namespace: String,
}

impl Names {
    /// The agent's task topic: `laddr.tasks.<agent>`.
    pub fn tasks(&self, agent: &str) -> String {
        format!("{}laddr.tasks.{agent}", self.namespace)
    }

    /// The shared responses topic: `laddr.responses`.
    pub fn responses(&self) -> String {
        format!("{}laddr.responses", self.namespace)
    }

    /// The agent's consumer group: `laddr-<agent>-workers`.
    pub fn group(&self, agent: &str) -> String {
        format!("{}laddr-{agent}-workers", self.namespace)
    }
}

/// A task for an agent: the user's query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// The query.
    pub query: String,
}

/// The researcher's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Research {
    /// The query researched.
    pub query: String,
    /// Its notes.
    pub notes: Vec<String>,
    /// Which process answered (`researcher@<pid>`).
    pub by: String,
}

/// The writer's task: the query and the researcher's notes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteTask {
    /// The query.
    pub query: String,
    /// The notes to write from.
    pub notes: Vec<String>,
}

/// The writer's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    /// The query written about.
    pub query: String,
    /// The text.
    pub text: String,
    /// Which process answered (`writer@<pid>`).
    pub by: String,
}

/// The coordinator's answer: both replies combined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The query.
    pub query: String,
    /// The researcher's reply.
    pub research: Research,
    /// The writer's reply.
    pub draft: Draft,
    /// Which process coordinated (`coordinator@<pid>`).
    pub by: String,
}

fn by(agent: &str) -> String {
    format!("{agent}@{}", std::process::id())
}

/// The researcher's work: three notes on the query.
pub fn research(query: &str) -> Vec<String> {
    ["what it is", "how it fails", "how to run it"]
        .iter()
        .map(|aspect| format!("{query}: {aspect}"))
        .collect()
}

/// The writer's work: a paragraph from the notes.
pub fn write(query: &str, notes: &[String]) -> String {
    format!("Report on {query}. {}.", notes.join("; "))
}

/// Creates the topics: a task topic per agent (4 partitions) and the responses topic (one
/// partition, replies kept an hour). Existing ones are kept.
pub async fn create_topics(backend: &dyn Backend, names: &Names) -> Result<()> {
    for agent in AGENTS {
        backend
            .create_topic(&TopicSpec::new(names.tasks(agent), 4))
            .await?;
    }
    backend
        .create_topic(&conveyor_runtime::effects::request::reply_topic_spec(
            names.responses(),
        ))
        .await?;
    Ok(())
}

/// This process's client: its reply topic is the shared responses topic.
pub fn client(backend: Arc<dyn Backend>, names: &Names) -> Client {
    Client::new(backend)
        .with_producer("laddr")
        .with_reply_topic(names.responses())
}

/// The worker of one agent on its task topic, in its group; the coordinator asks the others
/// through `client`.
pub fn worker(
    backend: Arc<dyn Backend>,
    names: &Names,
    agent: &str,
    client: Client,
) -> Result<Worker> {
    let builder =
        Worker::builder(backend, names.group(agent), [names.tasks(agent)]).concurrency(32);
    let builder = match agent {
        "researcher" => builder.handler(
            "research",
            json_handler(|t: Task, _job: Job| async move {
                Ok::<_, JobError>(Research {
                    notes: research(&t.query),
                    query: t.query,
                    by: by("researcher"),
                })
            }),
        ),
        "writer" => builder.handler(
            "write",
            json_handler(|t: WriteTask, _job: Job| async move {
                Ok::<_, JobError>(Draft {
                    text: write(&t.query, &t.notes),
                    query: t.query,
                    by: by("writer"),
                })
            }),
        ),
        "coordinator" => {
            let names = names.clone();
            builder.handler(
                "coordinate",
                json_handler(move |t: Task, job: Job| {
                    let (client, names) = (client.clone(), names.clone());
                    async move { coordinate(&client, &names, t, &job).await }
                }),
            )
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown agent `{other}`: the agents are {}",
                AGENTS.join(", ")
            )))
        }
    };
    Ok(builder.build())
}

/// The coordinator's work: asks the researcher, then the writer, and combines the replies.
async fn coordinate(
    client: &Client,
    names: &Names,
    task: Task,
    job: &Job,
) -> std::result::Result<Answer, JobError> {
    let id = job.id().unwrap_or("coordinate").to_owned();
    let ask = NewJob::json("research", &task)?.with_id(format!("{id}/research"));
    let research: Research = client
        .request(&names.tasks("researcher"), ask, AGENT_TIMEOUT)
        .await
        .map_err(JobError::retry)?
        .json()?;
    let ask = NewJob::json(
        "write",
        &WriteTask {
            query: task.query.clone(),
            notes: research.notes.clone(),
        },
    )?
    .with_id(format!("{id}/write"));
    let draft: Draft = client
        .request(&names.tasks("writer"), ask, AGENT_TIMEOUT)
        .await
        .map_err(JobError::retry)?
        .json()?;
    Ok(Answer {
        query: task.query,
        research,
        draft,
        by: by("coordinator"),
    })
}

/// Asks `agent` about each query at once and returns the replies in order (each the agent's
/// JSON reply, or the error).
pub async fn ask(
    client: &Client,
    names: &Names,
    agent: &str,
    queries: &[String],
    timeout: Duration,
) -> Vec<Result<serde_json::Value>> {
    let job_type = match agent {
        "coordinator" => "coordinate",
        "researcher" => "research",
        "writer" => "write",
        other => {
            let e = || {
                Error::InvalidArgument(format!(
                    "unknown agent `{other}`: the agents are {}",
                    AGENTS.join(", ")
                ))
            };
            return queries.iter().map(|_| Err(e())).collect();
        }
    };
    let calls: Vec<_> = queries
        .iter()
        .map(|q| {
            let (client, topic) = (client.clone(), names.tasks(agent));
            let task = match agent {
                "writer" => serde_json::json!({ "query": q, "notes": research(q) }),
                _ => serde_json::json!({ "query": q }),
            };
            tokio::spawn(async move {
                let job =
                    NewJob::json(job_type, &task).map_err(|e| Error::Corrupt(e.to_string()))?;
                let reply = client.request(&topic, job, timeout).await?;
                reply.json().map_err(|e| Error::Corrupt(e.to_string()))
            })
        })
        .collect();
    let mut out = Vec::with_capacity(calls.len());
    for call in calls {
        out.push(
            call.await
                .unwrap_or_else(|e| Err(Error::Storage(format!("the request task failed: {e}")))),
        );
    }
    out
}
