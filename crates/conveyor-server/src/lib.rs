//! conveyor-server: the HTTP API, the configuration and the `conveyor dev` assembly.
//!
//! # Layout
//! - [`config`]: [`Config`], loaded from `conveyor.toml` and `CONVEYOR_*` variables, validated.
//! - [`error`]: [`ApiError`], every HTTP error with its stable code.
//! - [`api`]: [`app`], the axum router (enqueue, topics, records, dead-letter replay, health,
//!   OpenAPI).
//! - [`auth`]: API tokens (`[[api.tokens]]`, roles `read`, `enqueue`, `admin`) checked on every
//!   route but the probes.
//! - [`dev`]: [`dev::run`], the embedded backend, the webhook routes and the API in one process.
//! - [`serve`]: [`serve::run`], the production assembly by role (`api`, `workers`, `scheduler`,
//!   `all`), and the refusal to expose an API without tokens.
//! - [`http`]: the API's listener (header-read timeout, connection and in-flight caps).
//! - [`metrics_listener`]: `GET /metrics` on `metrics.listen`, a port of its own
//!   (`api::metrics` serves it on the API port and counts the API's requests).
//! - [`remote`]: [`remote::ApiClient`], the HTTP API from Rust (used by the CLI), and dead-letter
//!   replay in steps ([`remote::ReplayOptions`]).
//! - [`topics`]: topics files (`conveyor topics apply -f topics.toml`).
//! - [`supervise`]: route workers restarted with backoff; [`supervise::RouteHealth`] for
//!   `/readyz`.

pub mod api;
pub mod auth;
pub mod config;
pub mod dev;
pub mod error;
pub mod http;
pub mod metrics_listener;
pub mod remote;
pub mod serve;
pub mod supervise;
pub mod topics;

pub use api::{app, AppState};
pub use config::{Config, ConfigError};
pub use error::ApiError;
