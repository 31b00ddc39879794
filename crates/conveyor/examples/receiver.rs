//! A webhook receiver for trying conveyor's routes: prints every job it gets.
//!
//! Run with: `cargo run -p conveyor --example receiver` (listens on 127.0.0.1:9000, or the
//! address given as the first argument).
//!
//! Answers 200, except: job type `always-fails` gets 422 (a permanent failure: conveyor
//! dead-letters it at once) and `flaky` gets 503 (conveyor retries it with backoff until its
//! attempts run out).

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let app = Router::new().route(
        "/hook",
        post(|headers: HeaderMap, body: String| async move {
            let h = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned()
            };
            let job_type = h("conveyor-job-type");
            println!(
                "{} {} attempt={} {}/{}@{} key={} body={body}",
                h("conveyor-message-id"),
                job_type,
                h("conveyor-attempt"),
                h("conveyor-topic"),
                h("conveyor-partition"),
                h("conveyor-offset"),
                h("conveyor-key"),
            );
            match job_type.as_str() {
                "always-fails" => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "this job can never succeed",
                ),
                "flaky" => (StatusCode::SERVICE_UNAVAILABLE, "try again later"),
                _ => (StatusCode::OK, "ok"),
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("receiver listening on http://{addr}/hook");
    axum::serve(listener, app).await?;
    Ok(())
}
