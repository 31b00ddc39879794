//! The agents example: the coordinator asks the researcher and the writer by request/reply over
//! the shared `laddr.responses` topic, and each of 50 concurrent queries gets the answer built
//! from its own query; agents with clients of their own (as separate processes) each take only
//! their own replies from the shared topic; the binary runs as its "Run with" line says, and a
//! query to an agent nobody serves fails with the timeout. Embedded backend; with
//! `--features live` and `CONVEYOR_TEST_BROKERS`, the agents as separate processes on Kafka.

use std::sync::Arc;
use std::time::Duration;

use conveyor_core::Backend;
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_examples::agents::{self, Answer, Names, AGENTS};
use conveyor_runtime::Client;
use tokio::sync::oneshot;

type Running = Vec<(
    oneshot::Sender<()>,
    tokio::task::JoinHandle<conveyor_core::Result<()>>,
)>;

/// Starts every agent, each with the client `client_of(agent)` gives.
fn start(backend: &Arc<dyn Backend>, names: &Names, client_of: impl Fn(&str) -> Client) -> Running {
    AGENTS
        .iter()
        .map(|agent| {
            let worker =
                agents::worker(Arc::clone(backend), names, agent, client_of(agent)).unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let run = tokio::spawn(worker.run(async {
                let _ = stopped.await;
            }));
            (stop, run)
        })
        .collect()
}

async fn stop(running: Running) {
    for (stop, run) in running {
        let _ = stop.send(());
        run.await.unwrap().unwrap();
    }
}

/// Each answer is the one its query implies: no answer went to the wrong question.
fn check(query: &str, answer: &serde_json::Value) -> Answer {
    let a: Answer = serde_json::from_value(answer.clone()).unwrap();
    assert_eq!(a.query, query, "{answer}");
    assert_eq!(a.research.query, query, "{answer}");
    assert_eq!(a.research.notes, agents::research(query), "{answer}");
    assert_eq!(a.draft.query, query, "{answer}");
    assert_eq!(
        a.draft.text,
        agents::write(query, &a.research.notes),
        "{answer}"
    );
    assert!(
        a.by.starts_with("coordinator@")
            && a.research.by.starts_with("researcher@")
            && a.draft.by.starts_with("writer@"),
        "{answer}"
    );
    a
}

fn queries(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("question {i} about Kafka"))
        .collect()
}

fn embedded(dir: &tempfile::TempDir) -> Arc<dyn Backend> {
    Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_queries_each_get_the_answer_to_their_own_question() {
    let dir = tempfile::tempdir().unwrap();
    let backend = embedded(&dir);
    let names = Names::default();
    agents::create_topics(backend.as_ref(), &names)
        .await
        .unwrap();
    let client = agents::client(Arc::clone(&backend), &names);
    let running = start(&backend, &names, |_| client.clone());
    let qs = queries(50);
    let answers = agents::ask(&client, &names, "coordinator", &qs, Duration::from_secs(60)).await;
    for (q, a) in qs.iter().zip(&answers) {
        check(q, a.as_ref().unwrap_or_else(|e| panic!("{q}: {e}")));
    }
    let c = client.request_counts();
    // 50 queries, and the coordinator's two requests for each
    assert_eq!(
        (c.replied, c.pending, c.foreign, c.late),
        (150, 0, 0, 0),
        "{c:?}"
    );
    assert_eq!(c.reply_topic.as_deref(), Some("laddr.responses"));
    for agent in AGENTS {
        let info = backend
            .describe_topic(&names.tasks(agent))
            .await
            .unwrap()
            .unwrap();
        let stored: i64 = info.partitions.iter().map(|p| p.high).sum();
        assert_eq!(stored, 50, "{agent}: one task per query");
        let committed = backend
            .committed_offsets(&names.group(agent), &names.tasks(agent))
            .await
            .unwrap();
        assert!(
            committed.iter().any(|(_, o)| o.is_some()),
            "{agent}: group laddr-{agent}-workers works"
        );
    }
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_clients_of_their_own_share_the_responses_topic_and_take_only_their_replies() {
    let dir = tempfile::tempdir().unwrap();
    let backend = embedded(&dir);
    let names = Names::default();
    agents::create_topics(backend.as_ref(), &names)
        .await
        .unwrap();
    // as if each agent and the user ran in a process of its own: four readers of one topic
    let user = agents::client(Arc::clone(&backend), &names);
    let coordinator = agents::client(Arc::clone(&backend), &names);
    let running = start(&backend, &names, |agent| match agent {
        "coordinator" => coordinator.clone(),
        _ => agents::client(Arc::clone(&backend), &names),
    });
    let qs = queries(20);
    let answers = agents::ask(&user, &names, "coordinator", &qs, Duration::from_secs(60)).await;
    for (q, a) in qs.iter().zip(&answers) {
        check(q, a.as_ref().unwrap_or_else(|e| panic!("{q}: {e}")));
    }
    let u = user.request_counts();
    assert_eq!((u.replied, u.pending), (20, 0), "{u:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (u, c) = (user.request_counts(), coordinator.request_counts());
        // each sees the other's replies on the shared topic and leaves them
        if u.foreign == 40 && c.foreign == 20 {
            assert_eq!(
                (c.replied, c.pending, c.late, u.late),
                (40, 0, 0, 0),
                "{c:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "user {u:?}, coordinator {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop(running).await;
}

fn run_binary(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agents"))
        .args(args)
        .arg("--data")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn answers(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

#[test]
fn the_binary_runs_as_its_run_with_line_says() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run_binary(&["run", "Kafka ISR", "exactly-once"], dir.path());
    assert!(ok, "{stdout}\n{stderr}");
    let lines = answers(&stdout);
    assert_eq!(lines.len(), 2, "{stdout}");
    for (line, q) in lines.iter().zip(["Kafka ISR", "exactly-once"]) {
        assert_eq!(line["query"], q);
        check(q, &line["answer"]);
    }
}

#[test]
fn a_query_to_an_agent_nobody_serves_fails_with_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run_binary(
        &[
            "ask",
            "--agent",
            "writer",
            "--timeout-ms",
            "300",
            "lonely question",
        ],
        dir.path(),
    );
    assert!(!ok, "{stdout}\n{stderr}");
    let lines = answers(&stdout);
    assert_eq!(lines.len(), 1, "{stdout}");
    let error = lines[0]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        error.contains("no reply to request")
            && error.contains("laddr.tasks.writer")
            && error.contains("300 ms"),
        "{error}"
    );
}

/// The agents as separate processes on Kafka: two researchers (one group), a writer, a
/// coordinator, and the questions asked from a fifth process; every process reads the shared
/// `laddr.responses` and takes only its own replies.
#[cfg(feature = "live")]
#[test]
fn live_kafka_agents_in_separate_processes() {
    use std::process::{Child, Command, Stdio};
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS").expect("CONVEYOR_TEST_BROKERS=host:port");
    let ns = format!(
        "t{}.",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let bin = env!("CARGO_BIN_EXE_agents");
    let common = [
        "--backend",
        "kafka",
        "--brokers",
        &brokers,
        "--namespace",
        &ns,
    ];
    struct Kill(Vec<Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut served = Kill(Vec::new());
    for agent in ["researcher", "researcher", "writer", "coordinator"] {
        served.0.push(
            Command::new(bin)
                .args(["serve", agent])
                .args(common)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
    }
    let qs = queries(20);
    let out = Command::new(bin)
        .arg("ask")
        .args(&qs)
        .args(common)
        .args(["--timeout-ms", "120000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = answers(&stdout);
    assert_eq!(lines.len(), qs.len(), "{stdout}");
    let pids: Vec<String> = served.0.iter().map(|c| c.id().to_string()).collect();
    for (line, q) in lines.iter().zip(&qs) {
        let a = check(q, &line["answer"]);
        for by in [&a.by, &a.research.by, &a.draft.by] {
            let pid = by.split('@').nth(1).unwrap();
            assert!(
                pids.iter().any(|p| p == pid),
                "{by} is one of the agent processes {pids:?}"
            );
        }
    }
    eprintln!(
        "agents on Kafka: {} queries answered by processes {pids:?}",
        qs.len()
    );
}
