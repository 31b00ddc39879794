//! `conveyor serve --role` on a live Kafka broker (issue 22 item 1): the API, the route workers
//! and the scheduler as three processes from one configuration file. Jobs enqueued through the
//! API process wait until a workers process runs, then are each delivered; no tick fires until a
//! scheduler process runs; each process's `/readyz` names its role, and one that serves no API
//! says so. Needs `CONVEYOR_TEST_BROKERS` (`scripts/kafka.sh`); built only with `--features live`.

#![cfg(feature = "live")]

mod util;

use std::process::{Command, Stdio};
use std::time::Duration;

use util::{post_jobs, receiver, start_on_a_free_port, wait_for, Dev};

fn serve(role: &'static str) -> impl FnMut(&std::path::Path) -> Dev {
    move |config| {
        Dev(Command::new(env!("CARGO_BIN_EXE_conveyor"))
            .args(["serve", "--role", role, "--config"])
            .arg(config)
            .env("CONVEYOR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start conveyor serve"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_workers_and_scheduler_run_apart() {
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS")
        .expect("set CONVEYOR_TEST_BROKERS=host:port, or run the tests through scripts/kafka.sh");
    let dir = tempfile::tempdir().unwrap();
    let (hook, received) = receiver(Duration::ZERO).await;
    let suffix = util::unique_suffix();
    let topic = format!("roles-{suffix}");
    let config_for = |port: u16| {
        let path = dir.path().join(format!("conveyor-{port}.toml"));
        std::fs::write(
            &path,
            format!(
                "backend = \"kafka\"\n[kafka]\nbrokers = \"{brokers}\"\nreplication_factor = 1\n[api]\nlisten = \"127.0.0.1:{port}\"\n\
                 [[topics]]\nname = \"{topic}\"\npartitions = 3\n\
                 [[routes]]\ntopic = \"{topic}\"\nurl = \"http://{hook}/hook\"\n\
                 [[schedules]]\nname = \"tick-{suffix}\"\ncron = \"* * * * * *\"\ntopic = \"{topic}\"\ntype = \"tick\"\n"
            ),
        )
        .unwrap();
        path
    };
    let http = reqwest::Client::new();
    let (_api, api) = start_on_a_free_port(config_for, serve("api")).await;
    let ready: serde_json::Value = http
        .get(format!("{api}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["role"], "api", "{ready}");

    let ids = post_jobs(&api, &topic, "ok", 50, 8).await;
    assert_eq!(ids.len(), 50);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        received.total(),
        0,
        "the API process delivered jobs or fired ticks"
    );

    let (_workers, workers) = start_on_a_free_port(config_for, serve("workers")).await;
    let ready: serde_json::Value = http
        .get(format!("{workers}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["role"], "workers", "{ready}");
    let r = http
        .get(format!("{workers}/v1/topics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("serves no API"),
        "{body}"
    );
    wait_for(
        Duration::from_secs(60),
        "the 50 jobs delivered by the workers process",
        || {
            let seen = received.ids();
            ids.iter().all(|id| seen.contains_key(id))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        received.total(),
        50,
        "ticks fired without a scheduler, or a job was delivered twice"
    );

    let (_scheduler, scheduler) = start_on_a_free_port(config_for, serve("scheduler")).await;
    let ready: serde_json::Value = http
        .get(format!("{scheduler}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["role"], "scheduler", "{ready}");
    wait_for(
        Duration::from_secs(60),
        "ticks fired by the scheduler process",
        || received.total() >= 52,
    )
    .await;
}
