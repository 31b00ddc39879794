//! `conveyor serve` and API tokens through the binary, as an operator meets them (issue 22):
//! the refusal to expose an open API beyond loopback, `conveyor dev`'s warning, roles that need
//! the kafka backend, `conveyor tokens create|hash`, a token read from the environment, and the
//! CLI sending `CONVEYOR_TOKEN`. No token appears in the server's log.
//!
//! (Every route's answer to missing, wrong and limited tokens, and the listener's bounds:
//! `conveyor-server/tests/production.rs`; roles apart on Kafka: `serve_roles_live.rs`.)

mod util;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use util::{free_port, wait_ok};

/// Runs the binary with `env` and `stdin`; returns (success, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conveyor"));
    cmd.args(args)
        .env("CONVEYOR_LOG", "warn")
        .env_remove("CONVEYOR_TOKEN")
        .env_remove("CONVEYOR_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run conveyor");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &std::path::Path, listen: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("conveyor.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{}\"\n[api]\nlisten = \"{listen}\"\n{extra}\n[[topics]]\nname = \"emails\"\npartitions = 2\n[[topics]]\nname = \"other\"\npartitions = 1\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

/// A server process whose stderr is collected; killed on drop.
struct Proc {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Proc {
    fn start(args: &[&str], env: &[(&str, &str)], log: std::path::PathBuf) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_conveyor"));
        cmd.args(args)
            .env("CONVEYOR_LOG", "info")
            .env_remove("CONVEYOR_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit by itself, up to `limit`.
    fn exited(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve` refuses an open API beyond loopback, names what to do, and starts once allowed
/// (with a warning); `dev` warns and starts; roles other than `all` need the kafka backend;
/// `serve` takes no implicit configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_an_open_api_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &format!("0.0.0.0:{port}"), "");
    let c = config.to_str().unwrap();
    let mut p = Proc::start(&["serve", "--config", c], &[], dir.path().join("open.log"));
    let status = p
        .exited(Duration::from_secs(30))
        .expect("serve kept running");
    let log = p.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("beyond loopback, without tokens") && log.contains("[[api.tokens]]"),
        "{log}"
    );

    // dev warns and runs
    let mut d = Proc::start(&["dev", "--config", c], &[], dir.path().join("dev.log"));
    wait_ok(
        &format!("http://127.0.0.1:{port}"),
        "/readyz",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        d.log().contains("beyond loopback, without tokens"),
        "{}",
        d.log()
    );
    let _ = d.child.kill();
    let _ = d.child.wait();

    // allowed: starts, with the warning
    let allowed = write_config(
        dir.path(),
        &format!("0.0.0.0:{port}"),
        "allow_unauthenticated = true",
    );
    let a = Proc::start(
        &["serve", "--config", allowed.to_str().unwrap()],
        &[],
        dir.path().join("allowed.log"),
    );
    wait_ok(
        &format!("http://127.0.0.1:{port}"),
        "/readyz",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        a.log().contains("allowed by api.allow_unauthenticated"),
        "{}",
        a.log()
    );
    drop(a);

    // a role apart on the embedded backend cannot work: said at start
    let local = write_config(dir.path(), &format!("127.0.0.1:{port}"), "");
    let (ok, _, err) = run(
        &[
            "serve",
            "--config",
            local.to_str().unwrap(),
            "--role",
            "workers",
        ],
        &[],
        None,
    );
    assert!(!ok && err.contains("needs the kafka backend"), "{err}");
    let (ok, _, err) = run(&["serve"], &[], None);
    assert!(
        !ok && err.contains("--config"),
        "serve without a configuration: {err}"
    );
}

/// `conveyor tokens create` prints a token and the entry that admits it; a server configured
/// with that entry and an admin token from the environment refuses the CLI without
/// `CONVEYOR_TOKEN`, accepts it with the token, limits it to its topic, and never logs a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_cli_reach_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, token, entry) = run(
        &[
            "tokens", "create", "--name", "shop", "--role", "enqueue", "--topic", "emails",
        ],
        &[],
        None,
    );
    assert!(ok, "{entry}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("cvt_"), "{token}");
    let entry = entry[entry.find("[[api.tokens]]").expect("the entry")..].to_owned();
    let (ok, hash, _) = run(&["tokens", "hash"], &[], Some(&token));
    assert!(ok && entry.contains(hash.trim()), "{hash} not in {entry}");
    assert!(
        !entry.contains(&token),
        "the entry holds the token itself: {entry}"
    );

    let admin = "cvt_an-admin-token-read-from-the-environment-0000";
    let port = free_port();
    // the printed entry as it is, after [api]; an admin token from the environment
    let extra = format!(
        "{entry}\n[[api.tokens]]\nname = \"ops\"\nroles = [\"admin\"]\nenv = \"OPS_TOKEN\"\n"
    );
    let config = write_config(dir.path(), &format!("0.0.0.0:{port}"), &extra);
    let server = Proc::start(
        &["serve", "--config", config.to_str().unwrap()],
        &[("OPS_TOKEN", admin)],
        dir.path().join("serve.log"),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ok(&base, "/readyz", Duration::from_secs(30)).await;
    let url = ["--url", base.as_str()];

    let enqueue = |topic: &str, token: Option<&str>| {
        let mut args = vec!["enqueue", topic, "--type", "t"];
        args.extend_from_slice(&url);
        let env: Vec<(&str, &str)> = token.map(|t| ("CONVEYOR_TOKEN", t)).into_iter().collect();
        run(&args, &env, None)
    };
    let (ok, _, err) = enqueue("emails", None);
    assert!(
        !ok && err.contains("401 unauthenticated") && err.contains("CONVEYOR_TOKEN"),
        "{err}"
    );
    let (ok, out, err) = enqueue("emails", Some(&token));
    assert!(ok && out.contains("\"topic\":\"emails\""), "{out} {err}");
    let (ok, _, err) = enqueue("other", Some(&token));
    assert!(!ok && err.contains("403 forbidden"), "{err}");
    let mut args = vec!["topics", "list"];
    args.extend_from_slice(&url);
    let (ok, out, err) = run(&args, &[("CONVEYOR_TOKEN", admin)], None);
    assert!(ok && out.contains("other"), "{out} {err}");
    let (ok, _, err) = run(&args, &[("CONVEYOR_TOKEN", &token)], None);
    assert!(!ok && err.contains("403 forbidden"), "{err}");

    let log = server.log();
    assert!(log.contains("2 token(s)"), "{log}");
    for secret in [token.as_str(), admin, hash.trim()] {
        assert!(
            !log.contains(secret),
            "the server's log holds a token or its hash: {log}"
        );
    }
}
