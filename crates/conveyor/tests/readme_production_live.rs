//! The "Running in production" commands of `docs/operations.md` (linked from the README), run as
//! written, in order, on a live Kafka broker: its `conveyor.toml` block, then each line of its
//! shell block (`… &` started in the background, `curl …/readyz` retried until the process is
//! up). Only addresses and the topic name are replaced (the broker's, free ports, a webhook
//! receiver here, a topic unique to the run). The welcome job must reach the webhook through the
//! workers process. Needs `CONVEYOR_TEST_BROKERS` (`scripts/kafka.sh`); built only with
//! `--features live`.

#![cfg(feature = "live")]

mod util;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use util::{free_port, receiver, wait_for};

/// The first fenced block of `lang` after `heading`.
fn block(page: &str, heading: &str, lang: &str) -> String {
    page.lines()
        .skip_while(|l| *l != heading)
        .skip_while(|l| *l != format!("```{lang}"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Background(Vec<Child>);

impl Drop for Background {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_production_commands_run_as_written() {
    let brokers = std::env::var("CONVEYOR_TEST_BROKERS")
        .expect("set CONVEYOR_TEST_BROKERS=host:port, or run the tests through scripts/kafka.sh");
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/operations.md"
    ))
    .unwrap();
    let heading = "# Running in production";
    let toml = block(&page, heading, "toml");
    let sh = block(&page, heading, "sh");
    assert!(
        toml.contains("backend = \"kafka\"") && sh.contains("conveyor serve"),
        "{toml}\n{sh}"
    );

    let (hook, received) = receiver(Duration::ZERO).await;
    let topic = format!("emails-{}", util::unique_suffix());
    let ports = [free_port(), free_port(), free_port()];
    let place = |text: &str| {
        text.replace("127.0.0.1:9092", &brokers)
            .replace("http://127.0.0.1:9000/hook", &format!("http://{hook}/hook"))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", ports[0]))
            .replace("127.0.0.1:8081", &format!("127.0.0.1:{}", ports[1]))
            .replace("127.0.0.1:8082", &format!("127.0.0.1:{}", ports[2]))
            .replace("emails", &topic)
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("conveyor.toml"), place(&toml)).unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_conveyor"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // the CLI's default server is the API's port, as in docs/operations.md
    let url = format!("http://127.0.0.1:{}", ports[0]);
    let bash = |line: &str| {
        let mut c = Command::new("bash");
        c.args(["-c", line])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("CONVEYOR_URL", &url)
            .env("CONVEYOR_LOG", "warn")
            .env_remove("CONVEYOR_TOKEN")
            .env_remove("CONVEYOR_CONFIG");
        c
    };
    let mut background = Background(Vec::new());
    let mut outputs = Vec::new();
    for line in sh
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let line = place(line);
        if let Some(cmd) = line.strip_suffix('&') {
            background.0.push(
                bash(cmd.trim())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .unwrap(),
            );
            continue;
        }
        let retry = line.starts_with("curl") && line.contains("/readyz");
        let deadline = std::time::Instant::now() + Duration::from_secs(if retry { 60 } else { 1 });
        let out = loop {
            let out = bash(&line).output().unwrap();
            if out.status.success() || std::time::Instant::now() > deadline {
                break out;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "`{line}` failed: {stdout} {stderr}");
        eprintln!("$ {line}\n{stdout}");
        outputs.push((line, stdout));
    }
    let enqueued = outputs
        .iter()
        .find(|(l, _)| l.contains("conveyor enqueue"))
        .map(|(_, out)| serde_json::from_str::<serde_json::Value>(out.trim()).unwrap())
        .expect("docs/operations.md enqueues a job");
    let id = enqueued["id"].as_str().unwrap().to_owned();
    wait_for(
        Duration::from_secs(60),
        "the welcome job at the webhook",
        || received.ids().contains_key(&id),
    )
    .await;
    let config = std::fs::read_to_string(dir.path().join("conveyor.toml")).unwrap();
    let token = std::fs::read_to_string(dir.path().join("ops.token")).unwrap();
    assert!(
        config.matches("[[api.tokens]]").count() == 2 && !config.contains(token.trim()),
        "the file holds the tokens' entries, not the tokens: {config}"
    );
}
