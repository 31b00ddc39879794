//! Handlers: the code a worker runs for a job type.
//!
//! Any `Fn(Job) -> impl Future<Output = impl IntoOutcome>` is a handler ([`handler_fn`]); typed
//! handlers decode the JSON payload first ([`json_handler`]). Handlers must be idempotent:
//! delivery is at-least-once.

use std::future::Future;
use std::marker::PhantomData;

use async_trait::async_trait;
use conveyor_core::Outcome;
use serde::de::DeserializeOwned;

use crate::worker::job::{settle, IntoOutcome, Job};

/// Runs one attempt of a job.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles `job` and says what happened. A panic counts as a retryable failure.
    async fn handle(&self, job: Job) -> Outcome;
}

/// A handler made from a closure.
pub struct FnHandler<F>(F);

impl<F> std::fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnHandler")
    }
}

/// Wraps `f(job)` as a [`Handler`].
pub fn handler_fn<F, Fut, O>(f: F) -> FnHandler<F>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send + 'static,
    O: IntoOutcome,
{
    FnHandler(f)
}

#[async_trait]
impl<F, Fut, O> Handler for FnHandler<F>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send + 'static,
    O: IntoOutcome,
{
    async fn handle(&self, job: Job) -> Outcome {
        let outputs = std::sync::Arc::clone(&job.outputs);
        settle(&outputs, (self.0)(job).await)
    }
}

/// A handler whose payload is decoded from JSON into `T` before `f(payload, job)` runs.
pub struct JsonHandler<T, F> {
    f: F,
    _t: PhantomData<fn() -> T>,
}

impl<T, F> std::fmt::Debug for JsonHandler<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JsonHandler<{}>", std::any::type_name::<T>())
    }
}

/// Wraps `f(payload, job)` as a [`Handler`] for JSON payloads of type `T`. A payload that does
/// not decode into `T` fails permanently (dead-letter) without calling `f`.
pub fn json_handler<T, F, Fut, O>(f: F) -> JsonHandler<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send + 'static,
    O: IntoOutcome,
{
    JsonHandler { f, _t: PhantomData }
}

#[async_trait]
impl<T, F, Fut, O> Handler for JsonHandler<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send + 'static,
    O: IntoOutcome,
{
    async fn handle(&self, job: Job) -> Outcome {
        match job.json::<T>() {
            Ok(payload) => {
                let outputs = std::sync::Arc::clone(&job.outputs);
                settle(&outputs, (self.f)(payload, job).await)
            }
            Err(e) => e.into(),
        }
    }
}
