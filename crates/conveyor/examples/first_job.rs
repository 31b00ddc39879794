//! A job enqueued and worked on the embedded backend: `cargo run -p conveyor --example first_job`.
use conveyor::{Client, JobError, NewJob, TopicSpec, Worker};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Welcome {
    to: String,
}

static SENT: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    conveyor::log::init(); // lines on stderr: a dead-lettered job says why (CONVEYOR_LOG filters)
    let dir = std::env::temp_dir().join(format!("conveyor-first-job-{}", std::process::id()));
    let backend = conveyor::embedded::open(&dir)?; // or conveyor::kafka::connect("127.0.0.1:9092")?
    conveyor::declare_topics(&*backend, [TopicSpec::new("emails", 4)]).await?;

    let to = "ada@example.com".to_string();
    let job = NewJob::json("email.welcome", &Welcome { to })?.with_key("user-42");
    Client::new(backend.clone()).enqueue("emails", job).await?; // a key's jobs run in order

    Worker::builder(backend.clone(), "mailers", ["emails"])
        .concurrency(32)
        .job("email.welcome", |w: Welcome, _job| async move {
            println!("sent welcome to {}", w.to); // a send that fails: .map_err(JobError::retry)?
            SENT.notify_one();
            Ok::<(), JobError>(()) // Err(JobError::fail(..)) dead-letters the job at once
        })
        .build()
        .run(SENT.notified()) // a service stops on a signal (SIGTERM) instead
        .await?;
    backend.close().await?;
    std::fs::remove_dir_all(dir)?; // this example's log is a throwaway
    Ok(())
}
