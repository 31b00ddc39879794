//! The ceiling for `conveyor bench`'s HTTP figures: a bare axum server that takes
//! `POST /v1/topics/{topic}/jobs` with the same JSON body conveyor's API takes, parses it, stores
//! nothing and answers `201` with a body of the same shape. `scripts/bench-http.sh` loads it and
//! `conveyor serve` with the same wrk settings in one run; the ratio of the two is the figure.
//!
//! ```text
//! cargo run --release -p conveyor-server --example bare_axum -- 127.0.0.1:7499
//! ```

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The allocator the `conveyor` binary runs on, so the two differ only in what they do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7499".to_owned());
    let app = Router::new().route(
        "/v1/topics/{topic}/jobs",
        post(|Path(topic): Path<String>, Json(job): Json<Value>| async move {
            if !job["type"].is_string() {
                return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error": "type"})));
            }
            (
                StatusCode::CREATED,
                Json(json!({ "id": "0192f0c4-5a1e-7000-8000-000000000000", "topic": topic, "partition": 0, "offset": 0 })),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bare axum server on http://{addr}");
    axum::serve(listener, app).await
}
