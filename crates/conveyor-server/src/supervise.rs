//! Keeps each route's worker running: a worker that stops with an error or panics is restarted
//! with backoff (1 s doubling to 30 s, back to 1 s after a minute of running), and while it is
//! down [`RouteHealth`] names it, so `GET /readyz` answers 503 `route_down` instead of a
//! process that accepts jobs (201) while one of its routes delivers nothing.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How long a restarted worker must run before its route counts as up again.
pub const UP_AFTER: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// Which routes are down, and why.
#[derive(Debug, Default)]
pub struct RouteHealth {
    down: Mutex<BTreeMap<String, String>>,
}

impl RouteHealth {
    /// The routes down now, with the reason, by name.
    pub fn down(&self) -> BTreeMap<String, String> {
        self.down.lock().expect("route health").clone()
    }

    /// Records `route` as down for `reason`, or (`None`) as up.
    pub fn set(&self, route: &str, reason: Option<String>) {
        let mut down = self.down.lock().expect("route health");
        match reason {
            Some(r) => down.insert(route.to_owned(), r),
            None => down.remove(route),
        };
    }
}

/// Runs the worker `start` makes (given the stop signal) until `stop` turns true, restarting it
/// whenever it ends otherwise.
pub async fn supervise<F, Fut>(
    route: String,
    health: Arc<RouteHealth>,
    mut stop: watch::Receiver<bool>,
    mut start: F,
) where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = conveyor_core::Result<()>> + Send + 'static,
{
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let mut run = tokio::spawn(start(stop.clone()));
        let outcome = tokio::select! {
            outcome = &mut run => outcome,
            () = tokio::time::sleep(UP_AFTER) => {
                health.set(&route, None);
                run.await
            }
        };
        if *stop.borrow() {
            health.set(&route, None);
            return;
        }
        let reason = match outcome {
            Ok(Ok(())) => "the worker stopped".to_owned(),
            Ok(Err(e)) => format!("the worker failed: {e}"),
            Err(e) => format!("the worker panicked: {e}"),
        };
        if started.elapsed() >= BACKOFF_RESET {
            backoff = Duration::from_secs(1);
        }
        tracing::error!(route, reason, ?backoff, "route worker died; restarting it");
        health.set(&route, Some(format!("{reason}; restarting in {backoff:?}")));
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => {
                health.set(&route, None);
                return;
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_dying_worker_is_restarted_and_its_route_reported_down_meanwhile() {
        let health = Arc::new(RouteHealth::default());
        let (stop_tx, stop) = watch::channel(false);
        let starts = Arc::new(AtomicU32::new(0));
        let task = tokio::spawn(supervise(
            "emails -> http://h/x".into(),
            Arc::clone(&health),
            stop,
            {
                let starts = Arc::clone(&starts);
                move |mut stop: watch::Receiver<bool>| {
                    let n = starts.fetch_add(1, Ordering::SeqCst);
                    async move {
                        match n {
                            0 => Err(conveyor_core::Error::Broker("boom".into())),
                            1 => panic!("worker bug"),
                            _ => {
                                let _ = stop.wait_for(|s| *s).await;
                                Ok(())
                            }
                        }
                    }
                }
            },
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let down = health.down();
        assert!(down["emails -> http://h/x"].contains("boom"), "{down:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            health.down()["emails -> http://h/x"].contains("panicked"),
            "{:?}",
            health.down()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            starts.load(Ordering::SeqCst),
            3,
            "restarted after 1 s, then 2 s"
        );
        assert!(
            !health.down().is_empty(),
            "not up before it ran for UP_AFTER"
        );
        tokio::time::sleep(UP_AFTER).await;
        assert!(health.down().is_empty(), "up once it kept running");
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(
            starts.load(Ordering::SeqCst),
            3,
            "a requested stop is not restarted"
        );
    }
}
