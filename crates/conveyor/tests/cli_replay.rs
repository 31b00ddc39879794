//! `conveyor dlq replay`, as a user runs it against `conveyor dev`: a webhook that refuses jobs
//! (400: dead-lettered at once) is fixed, and the dead letters are replayed to it, once.

mod util;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use util::{conveyor, start_dev_on_a_free_port, wait_for};

/// What the webhook saw: (message id, attempt, job type) per delivery.
type Seen = Arc<Mutex<Vec<(String, u32, String)>>>;

/// A webhook answering 400 while `broken` holds, 200 after.
async fn webhook(broken: Arc<AtomicBool>) -> (std::net::SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State((broken, seen)): State<(Arc<AtomicBool>, Seen)>, headers: HeaderMap| async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    seen.lock().unwrap().push((
                        h("conveyor-message-id"),
                        h("conveyor-attempt").parse().unwrap_or(0),
                        h("conveyor-job-type"),
                    ));
                    match broken.load(Ordering::SeqCst) {
                        true => StatusCode::BAD_REQUEST,
                        false => StatusCode::OK,
                    }
                },
            ),
        )
        .with_state((broken, Arc::clone(&seen)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_moves_dead_letters_back_once_with_progress() {
    let broken = Arc::new(AtomicBool::new(true));
    let (hook, seen) = webhook(Arc::clone(&broken)).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let write_config = |port: u16| {
        let config = dir.path().join("conveyor.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[[topics]]\nname = \"emails\"\npartitions = 2\n[[routes]]\ntopic = \"emails\"\nurl = \"http://{hook}/hook\"\n",
                data.display()
            ),
        )
        .unwrap();
        config
    };
    let (_dev, base) = start_dev_on_a_free_port(write_config).await;
    let url = ["--url", base.as_str()];
    let run = |args: &[&str]| conveyor(&[args, &url[..]].concat());

    let mut charges = Vec::new();
    for (i, t) in ["charge", "email", "charge", "email", "charge"]
        .iter()
        .enumerate()
    {
        let key = format!("k{i}");
        let (ok, out, err) = run(&["enqueue", "emails", "-t", t, "-k", &key]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        if *t == "charge" {
            charges.push(v["id"].as_str().unwrap().to_owned());
        }
    }
    let http = reqwest::Client::new();
    let retained = |topic: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let v: serde_json::Value =
                util::get_json(&http, &format!("{base}/v1/topics/{topic}")).await;
            v["partitions"].as_array().map_or(0, |ps| {
                ps.iter()
                    .map(|p| p["high"].as_i64().unwrap() - p["low"].as_i64().unwrap())
                    .sum::<i64>()
            })
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while retained("emails.dlq").await < 5 {
        assert!(tokio::time::Instant::now() < deadline, "5 dead letters");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // the topic is named by its jobs' topic; a dry run lists what would move and writes nothing
    let (ok, out, err) = run(&["dlq", "replay", "emails", "--type", "charge", "--dry-run"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("dead-letter topic emails.dlq (the dead letters of emails)"),
        "{err}"
    );
    assert!(
        out.contains("dry run: would move 3 dead letters of emails.dlq"),
        "{out}"
    );
    assert_eq!(out.matches("would move emails.dlq/").count(), 3, "{out}");
    assert_eq!(retained("emails").await, 5);

    // fixed: the charges go back, each once, as attempt 1
    broken.store(false, Ordering::SeqCst);
    let (ok, out, err) = run(&["dlq", "replay", "emails.dlq", "--type", "charge"]);
    assert!(ok, "{err}");
    eprintln!("$ conveyor dlq replay emails.dlq --type charge\n{err}{out}");
    assert!(
        err.contains("partition 0: ") && err.contains("partition 1: "),
        "{err}"
    );
    assert!(err.contains(" scanned, "), "{err}");
    assert!(
        out.contains("moved 3 dead letters of emails.dlq to their topics; 0 already replayed"),
        "{out}"
    );
    wait_for(Duration::from_secs(30), "3 replayed deliveries", || {
        seen.lock().unwrap().len() == 8
    })
    .await;
    {
        let seen = seen.lock().unwrap();
        let mut replayed: Vec<&String> = seen[5..].iter().map(|(id, _, _)| id).collect();
        replayed.sort();
        let mut want: Vec<&String> = charges.iter().collect();
        want.sort();
        assert_eq!(replayed, want);
        assert!(
            seen[5..].iter().all(|(_, a, t)| *a == 1 && t == "charge"),
            "{seen:?}"
        );
    }

    // again: nothing moves
    let (ok, out, err) = run(&["dlq", "replay", "emails", "--type", "charge"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("moved 0 dead letters of emails.dlq to their topics; 3 already replayed"),
        "{out}"
    );
    // the rest: the two emails
    let (ok, out, err) = run(&["dlq", "replay", "emails", "--offset", "0.."]);
    assert!(ok, "{err}");
    assert!(
        out.contains("moved 2 dead letters of emails.dlq to their topics; 3 already replayed"),
        "{out}"
    );
    wait_for(Duration::from_secs(30), "2 more deliveries", || {
        seen.lock().unwrap().len() == 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen.lock().unwrap().len(), 10, "nothing delivered twice");

    // refused: an empty range (by the CLI), a topic that does not exist (by the API)
    let (ok, _, err) = run(&["dlq", "replay", "emails", "--offset", "5..2"]);
    assert!(!ok);
    assert!(err.contains("5..2 is empty"), "{err}");
    let (ok, _, err) = run(&["dlq", "replay", "nothing"]);
    assert!(!ok);
    assert!(err.contains("unknown_topic"), "{err}");
    let (ok, _, err) = run(&["dlq", "replay", "emails", "--partition", "7"]);
    assert!(!ok);
    assert!(
        err.contains("invalid_field") && err.contains("partition 7"),
        "{err}"
    );
}
