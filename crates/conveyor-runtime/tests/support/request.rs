//! The request/reply scenarios, shared by `conveyor-runtime/tests/request.rs` (embedded) and
//! `conveyor-kafka/tests/request_live.rs` (Apache Kafka): concurrent requests each get their
//! own reply, a request nobody serves times out with the documented error, a request the worker
//! dead-letters fails with its error, replies for callers that went are dropped and counted,
//! and clients sharing one reply topic each take only their own replies.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use conveyor_core::{Backend, Error, RetryPolicy, TopicSpec};
use conveyor_runtime::{json_handler, Client, Job, JobError, NewJob, RequestCounts, Worker};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};

/// A running worker; stopped (and awaited) by [`Served::stop`].
pub(crate) struct Served {
    stop: oneshot::Sender<()>,
    run: tokio::task::JoinHandle<conveyor_core::Result<()>>,
}

impl Served {
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.run.await.unwrap().unwrap();
    }
}

/// Serves `topic`: `echo` replies `{"n": payload.n, "echo": payload}`; `fail` fails for good
/// (dead-lettered, its caller gets `reply_error`); `gated` waits for a permit of `gate`, then
/// replies like `echo`.
pub(crate) fn serve(
    backend: &Arc<dyn Backend>,
    topic: &str,
    group: &str,
    gate: Arc<Semaphore>,
) -> Served {
    let worker = Worker::builder(Arc::clone(backend), group, [topic])
        .concurrency(64)
        .retry(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .handler(
            "echo",
            json_handler(|p: Value, _job: Job| async move {
                Ok::<_, JobError>(json!({ "n": p["n"], "echo": p }))
            }),
        )
        .handler(
            "fail",
            json_handler(|p: Value, _job: Job| async move {
                Err::<(), _>(JobError::fail(format!("refused request {}", p["n"])))
            }),
        )
        .handler(
            "gated",
            json_handler(move |p: Value, _job: Job| {
                let gate = Arc::clone(&gate);
                async move {
                    gate.acquire().await.unwrap().forget();
                    Ok::<_, JobError>(json!({ "n": p["n"], "echo": p }))
                }
            }),
        )
        .build();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    Served { stop, run }
}

/// Waits (at most `within`) until `pred(counts)` holds; panics with the last counts otherwise.
pub(crate) async fn wait_counts(
    client: &Client,
    within: Duration,
    what: &str,
    pred: impl Fn(&RequestCounts) -> bool,
) -> RequestCounts {
    let deadline = Instant::now() + within;
    loop {
        let c = client.request_counts();
        if pred(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 1,000 requests at once, each with its own payload: each reply carries its request's payload
/// and correlation id; nothing is left pending.
pub(crate) async fn thousand_concurrent_requests(backend: Arc<dyn Backend>, topic: &str) {
    const N: usize = 1000;
    backend
        .create_topic(&TopicSpec::new(topic, 4))
        .await
        .unwrap();
    let served = serve(
        &backend,
        topic,
        &format!("{topic}.workers"),
        Arc::new(Semaphore::new(0)),
    );
    let client = Client::new(Arc::clone(&backend));
    // the first request opens the reply topic and waits for a worker that is still joining
    let warm = client
        .request(
            topic,
            NewJob::json("echo", &json!({"n": -1})).unwrap(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(warm.json::<Value>().unwrap()["n"], -1);
    let started = Instant::now();
    let calls: Vec<_> = (0..N)
        .map(|n| {
            let (client, topic) = (client.clone(), topic.to_owned());
            tokio::spawn(async move {
                let nonce = conveyor_core::headers::new_message_id();
                let job = NewJob::json("echo", &json!({ "n": n, "nonce": nonce })).unwrap();
                let reply = client.request(&topic, job, Duration::from_secs(60)).await;
                (n, nonce, reply)
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for call in calls {
        let (n, nonce, reply) = call.await.unwrap();
        let reply = reply.unwrap_or_else(|e| panic!("request {n}: {e}"));
        let v: Value = reply.json().unwrap();
        assert_eq!(v["n"], n, "request {n} got the reply of another: {v}");
        assert_eq!(v["echo"]["nonce"], nonce.as_str(), "request {n}: {v}");
        assert!(
            ids.insert(reply.correlation_id.clone()),
            "one correlation id twice"
        );
    }
    let elapsed = started.elapsed();
    let c = client.request_counts();
    eprintln!("{N} concurrent requests answered in {elapsed:?}: {c:?}");
    assert_eq!(c.pending, 0, "{c:?}");
    assert_eq!(c.replied, N as u64 + 1, "{c:?}");
    assert_eq!((c.timed_out, c.abandoned, c.failed), (0, 0, 0), "{c:?}");
    let reply_topic = c.reply_topic.expect("reply topic opened");
    assert!(reply_topic.starts_with(conveyor_runtime::effects::request::REPLY_TOPIC_PREFIX));
    let info = backend.describe_topic(&reply_topic).await.unwrap().unwrap();
    assert_eq!(
        info.partition_count(),
        1,
        "one reply topic of one partition"
    );
    served.stop().await;
}

/// A request to a topic no worker serves times out with [`Error::RequestTimeout`] naming the
/// topic and the correlation id, after about its timeout; nothing is left pending.
pub(crate) async fn unserved_request_times_out(backend: Arc<dyn Backend>, topic: &str) {
    backend
        .create_topic(&TopicSpec::new(topic, 1))
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&backend));
    client.reply_topic().await.unwrap();
    let job = NewJob::json("echo", &json!({"n": 1}))
        .unwrap()
        .with_id("req-unserved-1");
    let started = Instant::now();
    let e = client
        .request(topic, job, Duration::from_millis(500))
        .await
        .expect_err("nobody serves the topic");
    let waited = started.elapsed();
    match &e {
        Error::RequestTimeout {
            topic: t,
            correlation_id,
            waited_ms,
        } => {
            assert_eq!(
                (t.as_str(), correlation_id.as_str(), *waited_ms),
                (topic, "req-unserved-1", 500)
            );
        }
        other => panic!("expected RequestTimeout, got {other:?}"),
    }
    assert!(e.to_string().contains("is a worker serving"), "{e}");
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    let c = client.request_counts();
    assert_eq!((c.pending, c.sent, c.timed_out), (0, 1, 1), "{c:?}");
    // the request itself was stored, with where its reply goes
    let stored = backend.fetch(topic, 0, 0, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    let h = &stored[0].headers;
    assert_eq!(h.get_str("correlation_id"), Some("req-unserved-1"));
    assert_eq!(h.get_str("message_id"), Some("req-unserved-1"));
    assert_eq!(h.get_str("reply_to"), c.reply_topic.as_deref());
}

/// A request the worker dead-letters fails with [`Error::RequestFailed`] carrying the error.
pub(crate) async fn dead_lettered_request_fails(backend: Arc<dyn Backend>, topic: &str) {
    backend
        .create_topic(&TopicSpec::new(topic, 1))
        .await
        .unwrap();
    let served = serve(
        &backend,
        topic,
        &format!("{topic}.workers"),
        Arc::new(Semaphore::new(0)),
    );
    let client = Client::new(Arc::clone(&backend));
    let e = client
        .request(
            topic,
            NewJob::json("fail", &json!({"n": 7})).unwrap(),
            Duration::from_secs(60),
        )
        .await
        .expect_err("the handler fails for good");
    match &e {
        Error::RequestFailed {
            topic: t, error, ..
        } => {
            assert_eq!(t, topic);
            assert!(error.contains("refused request 7"), "{error}");
        }
        other => panic!("expected RequestFailed, got {other:?}"),
    }
    let c = client.request_counts();
    assert_eq!((c.pending, c.failed, c.replied), (0, 1, 0), "{c:?}");
    served.stop().await;
}

/// Callers that time out or are dropped leave nothing behind; their replies, sent after they
/// went, are dropped and counted as late.
pub(crate) async fn replies_for_gone_callers_are_dropped_and_counted(
    backend: Arc<dyn Backend>,
    topic: &str,
) {
    const TIMED_OUT: usize = 20;
    const DROPPED: usize = 10;
    backend
        .create_topic(&TopicSpec::new(topic, 2))
        .await
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let served = serve(
        &backend,
        topic,
        &format!("{topic}.workers"),
        Arc::clone(&gate),
    );
    let client = Client::new(Arc::clone(&backend));
    // a worker that answers first, so the gated requests are not waiting for a group join
    gate.add_permits(1);
    client
        .request(
            topic,
            NewJob::json("gated", &json!({"n": -1})).unwrap(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let mut timing_out = Vec::new();
    for n in 0..TIMED_OUT {
        let (client, topic) = (client.clone(), topic.to_owned());
        timing_out.push(tokio::spawn(async move {
            let job = NewJob::json("gated", &json!({ "n": n })).unwrap();
            client
                .request(&topic, job, Duration::from_millis(300))
                .await
        }));
    }
    let mut dropped = Vec::new();
    for n in 0..DROPPED {
        let (client, topic) = (client.clone(), topic.to_owned());
        dropped.push(tokio::spawn(async move {
            let job = NewJob::json("gated", &json!({ "n": 100 + n })).unwrap();
            client.request(&topic, job, Duration::from_secs(600)).await
        }));
    }
    // every request is published before its caller goes
    wait_counts(&client, Duration::from_secs(30), "all sent", |c| {
        c.sent == (1 + TIMED_OUT + DROPPED) as u64
    })
    .await;
    for d in &dropped {
        d.abort();
    }
    for t in timing_out {
        let e = t
            .await
            .unwrap()
            .expect_err("the handler waits for the gate");
        assert!(matches!(e, Error::RequestTimeout { .. }), "{e:?}");
    }
    for d in dropped {
        assert!(d.await.unwrap_err().is_cancelled());
    }
    let c = client.request_counts();
    assert_eq!(
        c.pending, 0,
        "the callers' entries are removed at once: {c:?}"
    );
    assert_eq!(
        (c.timed_out, c.abandoned),
        (TIMED_OUT as u64, DROPPED as u64),
        "{c:?}"
    );
    // now the handlers reply, to callers that have gone
    gate.add_permits(TIMED_OUT + DROPPED);
    let c = wait_counts(
        &client,
        Duration::from_secs(60),
        "late replies counted",
        |c| c.late == (TIMED_OUT + DROPPED) as u64,
    )
    .await;
    assert_eq!((c.pending, c.replied, c.foreign), (0, 1, 0), "{c:?}");
    // and the client still answers
    gate.add_permits(1);
    client
        .request(
            topic,
            NewJob::json("gated", &json!({"n": 1000})).unwrap(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(client.request_counts().pending, 0);
    served.stop().await;
}

/// Two clients share one named reply topic (as agents share `laddr.responses`): each gets only
/// its own replies, and counts the other's as foreign.
pub(crate) async fn clients_sharing_a_reply_topic_take_their_own(
    backend: Arc<dyn Backend>,
    topic: &str,
    replies: &str,
) {
    const N: usize = 100;
    backend
        .create_topic(&TopicSpec::new(topic, 2))
        .await
        .unwrap();
    let served = serve(
        &backend,
        topic,
        &format!("{topic}.workers"),
        Arc::new(Semaphore::new(0)),
    );
    let a = Client::new(Arc::clone(&backend)).with_reply_topic(replies);
    let b = Client::new(Arc::clone(&backend)).with_reply_topic(replies);
    assert_eq!(a.reply_topic().await.unwrap(), replies);
    assert_eq!(b.reply_topic().await.unwrap(), replies);
    let mut calls = Vec::new();
    for n in 0..N {
        for (who, client) in [("a", &a), ("b", &b)] {
            let (client, topic) = (client.clone(), topic.to_owned());
            calls.push(tokio::spawn(async move {
                let job = NewJob::json("echo", &json!({ "n": n, "who": who })).unwrap();
                let r = client
                    .request(&topic, job, Duration::from_secs(60))
                    .await
                    .unwrap();
                let v: Value = r.json().unwrap();
                assert_eq!(
                    (v["n"].as_u64(), v["echo"]["who"].as_str()),
                    (Some(n as u64), Some(who))
                );
            }));
        }
    }
    for c in calls {
        c.await.unwrap();
    }
    for client in [&a, &b] {
        let c = wait_counts(
            client,
            Duration::from_secs(30),
            "the other's replies seen",
            |c| c.foreign == N as u64,
        )
        .await;
        assert_eq!((c.pending, c.replied, c.late), (0, N as u64, 0), "{c:?}");
    }
    served.stop().await;
}
