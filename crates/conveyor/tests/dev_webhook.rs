//! `conveyor dev` in process (the real HTTP server on port 0) delivering to a real webhook
//! receiver: 10,000 jobs all delivered, failures retried or dead-lettered.

mod util;

use std::time::Duration;

use conveyor_core::RetryPolicy;
use conveyor_server::config::RouteConfig;
use conveyor_server::Config;
use tokio::sync::oneshot;
use util::{post_jobs, receiver, wait_for};

async fn start_dev(config: Config) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        conveyor_server::dev::run(config, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (base, stop, handle)
}

fn route(topic: &str, url: String) -> RouteConfig {
    RouteConfig {
        topic: topic.into(),
        url,
        group: None,
        concurrency: 16,
        timeout_ms: 5_000,
        max_buffered: 256,
        retry: Some(RetryPolicy::fast(4)),
        ordered_retries: true,
        priorities: Default::default(),
        strict_priority: false,
        job_states: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_over_http_are_each_delivered_to_the_webhook() {
    let (hook, received) = receiver(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    config
        .routes
        .push(route("orders", format!("http://{hook}/hook")));
    let (base, stop, handle) = start_dev(config).await;

    let acked = post_jobs(&base, "orders", "ok", 10_000, 16).await;
    assert_eq!(acked.len(), 10_000, "every request must be acknowledged");
    wait_for(
        Duration::from_secs(120),
        "all 10,000 jobs delivered",
        || received.ids().len() == 10_000,
    )
    .await;
    let ids = received.ids();
    for id in &acked {
        assert!(
            ids.contains_key(id),
            "job {id} was acknowledged but never delivered"
        );
    }
    // a healthy run delivers each job once
    assert_eq!(received.total(), 10_000);

    // lag reaches zero once the commits land
    let http = reqwest::Client::new();
    wait_for(Duration::from_secs(10), "lag 0", || {
        let v: serde_json::Value =
            futures_lite(http.get(format!("{base}/v1/groups/webhook.orders/lag?topic=orders")));
        v["lag"] == 0
    })
    .await;
    stop.send(()).unwrap();
    handle.await.unwrap();
}

/// Blocking helper for use inside `wait_for` (runs on a multi-thread runtime).
fn futures_lite(req: reqwest::RequestBuilder) -> serde_json::Value {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current()
            .block_on(async { req.send().await.unwrap().json().await.unwrap() })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_failures_retry_on_5xx_and_dead_letter_on_4xx() {
    let (hook, received) = receiver(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    config
        .routes
        .push(route("payments", format!("http://{hook}/hook")));
    let (base, stop, handle) = start_dev(config).await;

    let flaky = post_jobs(&base, "payments", "flaky", 1, 1).await;
    let bad = post_jobs(&base, "payments", "bad", 1, 1).await;
    wait_for(
        Duration::from_secs(20),
        "flaky done after 3 attempts",
        || {
            received
                .deliveries
                .lock()
                .unwrap()
                .iter()
                .any(|(id, a, _)| *id == flaky[0] && *a == 3)
        },
    )
    .await;

    let http = reqwest::Client::new();
    let mut dlq = serde_json::Value::Null;
    wait_for(
        Duration::from_secs(20),
        "the 400 lands in payments.dlq",
        || {
            let info: serde_json::Value =
                futures_lite(http.get(format!("{base}/v1/topics/payments.dlq")));
            let Some(parts) = info["partitions"].as_array() else {
                return false;
            };
            for p in parts {
                if p["high"].as_i64().unwrap_or(0) > 0 {
                    dlq = futures_lite(http.get(format!(
                        "{base}/v1/topics/payments.dlq/records?partition={}",
                        p["partition"]
                    )));
                    return true;
                }
            }
            false
        },
    )
    .await;
    let r = &dlq["records"][0];
    assert_eq!(r["headers"]["message_id"], bad[0].as_str());
    assert_eq!(r["headers"]["dlq_reason"], "failed");
    assert_eq!(r["headers"]["dlq_attempts"], "1");
    assert!(
        r["headers"]["dlq_error"]
            .as_str()
            .unwrap()
            .contains("400 Bad Request"),
        "{r}"
    );
    assert_eq!(r["headers"]["dlq_original_topic"], "payments");
    assert_eq!(r["value"], serde_json::json!({"i": 0}));
    let attempts: Vec<u32> = received
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, ..)| *id == flaky[0])
        .map(|(_, a, _)| *a)
        .collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    stop.send(()).unwrap();
    handle.await.unwrap();
}

/// Two routes on one topic (a mailer and an audit hook, the second with its own group): each URL
/// gets every job. Two routes sharing a group are refused at start (see the configuration
/// tests), since they would split the jobs between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routes_on_one_topic_each_get_every_job() {
    let (mailer, to_mailer) = receiver(Duration::from_millis(1)).await;
    let (audit, to_audit) = receiver(Duration::from_millis(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = util::free_port();
    let config = dir.path().join("conveyor.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[[topics]]\nname = \"emails\"\npartitions = 4\n[[routes]]\ntopic = \"emails\"\nurl = \"http://{mailer}/hook\"\n[[routes]]\ntopic = \"emails\"\nurl = \"http://{audit}/hook\"\ngroup = \"audit\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let _dev = util::start_dev(&config);
    util::wait_ok(&base, "/readyz", Duration::from_secs(30)).await;
    let acked = post_jobs(&base, "emails", "ok", 40, 4).await;
    assert_eq!(acked.len(), 40);
    wait_for(Duration::from_secs(30), "both URLs got every job", || {
        let (m, a) = (to_mailer.ids(), to_audit.ids());
        acked
            .iter()
            .all(|id| m.contains_key(id) && a.contains_key(id))
    })
    .await;

    // the same two routes without the second's group: refused at start, naming both
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("group = \"audit\"\n", "");
    std::fs::write(
        &bad,
        text.replace(&format!("{port}"), &format!("{}", util::free_port())),
    )
    .unwrap();
    let (ok, _, err) = util::conveyor(&["dev", "--config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("routes[0] and routes[1]"), "{err}");
}

/// `api.reply_topic`: the API's requests take their replies from the named topic, across a
/// restart, and leave no `conveyor.replies.<random>` topic behind (without it, every run
/// creates one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_reply_topic_is_reused_across_restarts() {
    let (hook, received) = receiver(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    config.api.reply_topic = Some("api-replies".into());
    config
        .routes
        .push(route("lookups", format!("http://{hook}/hook")));
    let http = reqwest::Client::new();
    for run in 0..2 {
        let (base, stop, handle) = start_dev(config.clone()).await;
        util::wait_ok(&base, "/readyz", Duration::from_secs(30)).await;
        let r = http
            .post(format!("{base}/v1/topics/lookups/requests"))
            .json(&serde_json::json!({"type": "ok", "payload": {"run": run}, "reply_timeout_ms": 20000}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "run {run}: {}", r.text().await.unwrap());
        let topics: serde_json::Value = util::get_json(&http, &format!("{base}/v1/topics")).await;
        let names: Vec<&str> = topics["topics"]
            .as_array()
            .unwrap_or_else(|| panic!("{topics}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"api-replies"), "run {run}: {names:?}");
        assert!(
            !names.iter().any(|n| n.starts_with("conveyor.replies.")),
            "run {run}: a random reply topic was created: {names:?}"
        );
        stop.send(()).unwrap();
        handle.await.unwrap();
    }
    assert_eq!(received.total(), 2);
}

/// Which timeout wins on a webhook route: the job's own `timeout_ms`, both ways. A route with
/// `timeout_ms = 1000` and a receiver that answers `slow` jobs after 2 s: a job with
/// `timeout_ms = 5000` is delivered once and done; a job without one is cut at the route's 1 s
/// (the request times out) and, with one attempt allowed, dead-lettered; a job with
/// `timeout_ms = 500` is cut at its own bound, before the route's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_own_timeout_ms_wins_over_the_routes() {
    let (hook, received) = receiver(Duration::from_secs(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let mut r = route("reports", format!("http://{hook}/hook"));
    r.timeout_ms = 1_000;
    r.retry = Some(RetryPolicy::fast(1));
    config.routes.push(r);
    let (base, stop, handle) = start_dev(config).await;
    util::wait_ok(&base, "/readyz", Duration::from_secs(30)).await;

    let http = reqwest::Client::new();
    let enqueue = |body: serde_json::Value| {
        let (http, url) = (http.clone(), format!("{base}/v1/topics/reports/jobs"));
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 201);
            let v: serde_json::Value = r.json().await.unwrap();
            v["id"].as_str().unwrap().to_owned()
        }
    };
    let own_longer =
        enqueue(serde_json::json!({"type": "slow", "payload": {}, "timeout_ms": 5000})).await;
    let none = enqueue(serde_json::json!({"type": "slow", "payload": {}})).await;
    let own_shorter =
        enqueue(serde_json::json!({"type": "slow", "payload": {}, "timeout_ms": 500})).await;

    // the two cut short are dead-lettered (one attempt); the group then has nothing left
    let mut dead: Vec<serde_json::Value> = Vec::new();
    wait_for(
        Duration::from_secs(30),
        "two dead letters and lag 0",
        || {
            let info: serde_json::Value =
                futures_lite(http.get(format!("{base}/v1/topics/reports.dlq")));
            dead = info["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| {
                    let v = futures_lite(http.get(format!(
                        "{base}/v1/topics/reports.dlq/records?partition={}",
                        p["partition"]
                    )));
                    v["records"].as_array().cloned().unwrap_or_default()
                })
                .collect();
            let lag: serde_json::Value = futures_lite(http.get(format!(
                "{base}/v1/groups/webhook.reports/lag?topic=reports"
            )));
            dead.len() >= 2 && lag["lag"] == 0
        },
    )
    .await;
    let reason = |id: &str| {
        dead.iter()
            .find(|r| r["headers"]["message_id"] == id)
            .map(|r| r["headers"]["dlq_error"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(
        reason(&own_longer),
        None,
        "the job with timeout_ms = 5000 was cut by the route's 1 s timeout"
    );
    let attempts: Vec<u32> = received
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, ..)| *id == own_longer)
        .map(|(_, a, _)| *a)
        .collect();
    assert_eq!(attempts, vec![1], "the job with timeout_ms = 5000 ran once");
    let cut = reason(&none).expect("the job without timeout_ms is dead-lettered");
    assert!(cut.contains("timed out"), "{cut}");
    let cut = reason(&own_shorter).expect("the job with timeout_ms = 500 is dead-lettered");
    assert!(
        cut.contains("timed out") || cut.contains("timeout_ms"),
        "{cut}"
    );
    assert_eq!(dead.len(), 2, "{dead:?}");
    stop.send(()).unwrap();
    handle.await.unwrap();
}
