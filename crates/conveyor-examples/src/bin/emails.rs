//! Run with: `cargo run -p conveyor-examples --bin emails` (add `--backend kafka --brokers 127.0.0.1:9092` for Kafka).
//!
//! A client enqueues a welcome email, a worker sends it, on either backend; this program stops
//! once the email is sent (`tests/emails.rs` runs it). The README's smaller program, on the
//! embedded backend with the `conveyor` crate alone, is `crates/conveyor/examples/first_job.rs`.

use std::sync::Arc;

use conveyor_core::{Backend, TopicSpec};
use conveyor_examples::backend::Which;
use conveyor_runtime::{Client, JobError, NewJob, Worker};

static SENT: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Sending, as far as this example goes: a line on stdout.
async fn send(to: &str) -> Result<(), std::io::Error> {
    println!("sent welcome to {to}");
    SENT.notify_one();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = Which::from_args(&args)?.open()?;
    backend.create_topic(&TopicSpec::new("emails", 4)).await?;
    run(backend.clone(), SENT.notified()).await?;
    backend.close().await?;
    Ok(())
}

/// Enqueue, then work until the email is sent.
async fn run(
    backend: Arc<dyn Backend>,
    shutdown_signal: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Welcome {
        to: String,
    }

    let client = Client::new(backend.clone());
    client
        .enqueue(
            "emails",
            NewJob::json(
                "email.welcome",
                &Welcome {
                    to: "ada@example.com".into(),
                },
            )?
            .with_key("user-42"),
        )
        .await?;

    Worker::builder(backend.clone(), "mailers", ["emails"])
        .concurrency(32)
        .job("email.welcome", |w: Welcome, _job| async move {
            send(&w.to).await.map_err(JobError::retry)?; // retried with backoff
            Ok::<(), JobError>(()) // JobError::fail(..) dead-letters now
        })
        .build()
        .run(shutdown_signal)
        .await?;
    Ok(())
}
