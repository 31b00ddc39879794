//! A webhook receiver for cron schedules' jobs: records each delivery's message id, schedule,
//! tick (`Conveyor-Scheduled-At`) and arrival time. Used by `schedules.rs` and
//! `schedules_live.rs`.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

/// One delivery of a tick's job.
#[derive(Debug, Clone)]
pub struct Tick {
    pub id: String,
    pub schedule: String,
    /// The tick, Unix ms.
    pub tick: i64,
    /// When the webhook got it, Unix ms.
    pub received: i64,
}

#[derive(Debug, Default)]
pub struct Ticks(pub Mutex<Vec<Tick>>);

impl Ticks {
    /// The deliveries of one schedule, by tick.
    pub fn of(&self, schedule: &str) -> Vec<Tick> {
        let mut v: Vec<Tick> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.schedule == schedule)
            .cloned()
            .collect();
        v.sort_by_key(|t| t.tick);
        v
    }

    /// Message ids delivered more than once, with their counts.
    pub fn repeated(&self) -> BTreeMap<String, usize> {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for t in self.0.lock().unwrap().iter() {
            *m.entry(t.id.clone()).or_default() += 1;
        }
        m.retain(|_, n| *n > 1);
        m
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Parses `2026-01-05T10:00:01.000Z` (what conveyor writes) into Unix ms.
pub fn parse_ms(t: &str) -> i64 {
    humantime::parse_rfc3339(t)
        .unwrap_or_else(|e| panic!("`{t}`: {e}"))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Starts the receiver on `/hook` (every delivery answered 200).
pub async fn tick_receiver() -> (SocketAddr, Arc<Ticks>) {
    let ticks = Arc::new(Ticks::default());
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(t): State<Arc<Ticks>>, headers: HeaderMap| async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    t.0.lock().unwrap().push(Tick {
                        id: h("conveyor-message-id"),
                        schedule: h("conveyor-schedule"),
                        tick: parse_ms(&h("conveyor-scheduled-at")),
                        received: now_ms(),
                    });
                    StatusCode::OK
                },
            ),
        )
        .with_state(Arc::clone(&ticks));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, ticks)
}

/// Each tick one second after the previous: none missing, none repeated.
pub fn assert_every_second(what: &str, ticks: &[i64]) {
    for w in ticks.windows(2) {
        assert_eq!(w[1] - w[0], 1000, "{what}: a gap or a repeat in {ticks:?}");
    }
}

pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
