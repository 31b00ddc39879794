//! A full disk under `conveyor dev` (the real binary) on the embedded backend: jobs are posted
//! until the data folder's filesystem has no room left, while a webhook route delivers them.
//!
//! What a user checks:
//! - the first refused job gets `503 backend_unavailable` saying the log stopped taking writes
//!   and what to do (free space, restart), and `/readyz` never answers 200 from then on;
//! - the process stops by itself with a non-zero exit and that message, instead of staying up
//!   refusing every write (fjall refuses all writes after a failed one until it is reopened);
//! - after space is freed and conveyor restarts, every acknowledged job is in the log exactly
//!   once and is delivered, and new jobs are taken again.
//!
//! Both `embedded.durability` modes. The small filesystem is a 24 MiB tmpfs the test mounts,
//! which needs root (as `.ci/run` runs), else `CONVEYOR_TEST_SMALL_FS`: a folder on a filesystem
//! with 24 MiB to 1 GiB free, which the test fills with a file and empties again. Without either
//! the test fails, saying so.

mod util;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use util::{receiver, start_on_a_free_port, wait_for, Dev};

/// Room left for conveyor: the filler takes the rest, and is deleted to free space.
const ROOM: u64 = 10 << 20;
/// Each job's payload: random text, which fjall's compression cannot shrink much.
const PAYLOAD: usize = 100_000;
/// The most free space `CONVEYOR_TEST_SMALL_FS` may have (the test writes all but `ROOM` of it).
const MAX_SMALL_FS: u64 = 1 << 30;

/// A folder on a small filesystem; a tmpfs mounted by the test is unmounted when dropped.
struct SmallFs {
    dir: PathBuf,
    mounted: Option<tempfile::TempDir>,
}

impl SmallFs {
    fn new() -> SmallFs {
        if let Ok(base) = std::env::var("CONVEYOR_TEST_SMALL_FS") {
            let dir = Path::new(&base).join(format!("full-disk-{}", util::unique_suffix()));
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| {
                panic!(
                    "CONVEYOR_TEST_SMALL_FS={base}: cannot create {}: {e}",
                    dir.display()
                )
            });
            let fs = SmallFs { dir, mounted: None };
            assert!(
                fs.free() <= MAX_SMALL_FS,
                "CONVEYOR_TEST_SMALL_FS={base} has {} MiB free; the test fills it, so give it a \
                 filesystem with 24 MiB to 1 GiB free",
                fs.free() >> 20
            );
            return fs;
        }
        let at = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
            .arg(at.path())
            .output()
            .map_err(|e| e.to_string())
            .and_then(|out| match out.status.success() {
                true => Ok(()),
                false => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            });
        if let Err(why) = mounted {
            panic!(
                "the full-disk test needs a small filesystem: it mounts a 24 MiB tmpfs, which needs \
                 root with CAP_SYS_ADMIN (mount: {why}). Run it as root, or set \
                 CONVEYOR_TEST_SMALL_FS to a folder on a filesystem with 24 MiB to 1 GiB free that \
                 the test may fill"
            );
        }
        SmallFs {
            dir: at.path().to_owned(),
            mounted: Some(at),
        }
    }

    /// Bytes free, counting the blocks kept for root (conveyor may run as root and use them).
    fn free(&self) -> u64 {
        let v = rustix::fs::statvfs(&self.dir).unwrap();
        v.f_bfree.saturating_mul(v.f_frsize)
    }

    /// Writes random bytes to `path` until at most `room` bytes are free (or the disk is full).
    fn fill(&self, path: &Path, room: u64) {
        use std::io::Write;
        let mut f = std::fs::File::create(path).unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            let over = self.free().saturating_sub(room);
            if over == 0 {
                break;
            }
            rand::fill(&mut chunk[..]);
            let n = over.min(chunk.len() as u64) as usize;
            match f.write_all(&chunk[..n]).and_then(|()| f.sync_data()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("cannot write the filler {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        match &self.mounted {
            Some(at) => {
                let _ = Command::new("umount").arg("-l").arg(at.path()).status();
            }
            None => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}

/// Prints a process's log when the test fails.
struct ShowOnPanic(PathBuf);

impl Drop for ShowOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("--- {} ---\n{log}--- end ---", self.0.display());
        }
    }
}

/// `conveyor dev` with its standard error kept in `log` (outside the small filesystem).
fn start(config: &Path, log: &Path) -> Dev {
    Dev(Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(["dev", "--config"])
        .arg(config)
        .env("CONVEYOR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start conveyor dev"))
}

/// A configuration file: the data folder on the small filesystem, one topic, a webhook route.
fn config(work: &Path, data: &Path, durability: &str, hook: SocketAddr, port: u16) -> PathBuf {
    let path = work.join(format!("conveyor-{port}.toml"));
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{}\"\n[embedded]\ndurability = \"{durability}\"\n\
             [api]\nlisten = \"127.0.0.1:{port}\"\n\
             [[topics]]\nname = \"jobs\"\npartitions = 1\n\
             [[routes]]\ntopic = \"jobs\"\nurl = \"http://{hook}/hook\"\n",
            data.display()
        ),
    )
    .unwrap();
    path
}

/// Every record's message id in `topic` (one partition), read through the records API.
async fn ids_in_log(base: &str, topic: &str) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    let mut offset = 0;
    loop {
        let page: serde_json::Value = util::get_json(
            &http,
            &format!("{base}/v1/topics/{topic}/records?partition=0&offset={offset}&limit=20"),
        )
        .await;
        let records = page["records"].as_array().unwrap();
        if records.is_empty() {
            return ids;
        }
        for r in records {
            ids.push(r["headers"]["message_id"].as_str().unwrap().to_owned());
        }
        offset = page["next_offset"].as_i64().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_conveyor_with_a_clear_error_and_loses_no_acknowledged_job() {
    full_disk("fsync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_with_os_durability_loses_no_acknowledged_job() {
    full_disk("os").await;
}

async fn full_disk(durability: &str) {
    let fs = SmallFs::new();
    let filler = fs.dir.join("filler");
    fs.fill(&filler, ROOM);
    let room = fs.free();
    assert!(
        room <= ROOM + (1 << 20),
        "{room} bytes still free after the filler (a compressing filesystem?)"
    );

    let work = tempfile::tempdir().unwrap();
    let data = fs.dir.join("data");
    let (hook, first_received) = receiver(Duration::from_millis(100)).await;
    let log = work.path().join("first.log");
    let _show = ShowOnPanic(log.clone());
    let (mut dev, base) = start_on_a_free_port(
        |port| config(work.path(), &data, durability, hook, port),
        |c| start(c, &log),
    )
    .await;

    let http = reqwest::Client::new();
    let mut acked: Vec<String> = Vec::new();
    let mut refused = None;
    for _ in 0..(4 * ROOM as usize / PAYLOAD) {
        let payload = Alphanumeric.sample_string(&mut rand::rng(), PAYLOAD);
        let r = http
            .post(format!("{base}/v1/topics/jobs/jobs"))
            // "slow": the receiver takes 100 ms, so jobs are still undelivered at the exit
            .json(&serde_json::json!({"type": "slow", "payload": payload}))
            .send()
            .await
            .expect("conveyor dev answers until the first refusal");
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap();
        if status == reqwest::StatusCode::CREATED {
            acked.push(body["id"].as_str().unwrap().to_owned());
        } else {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.unwrap_or_else(|| {
        panic!(
            "{} jobs of {PAYLOAD} bytes were taken with {room} bytes free: the disk never filled",
            acked.len()
        )
    });
    eprintln!(
        "full disk ({durability}): {} jobs acknowledged, then {status}: {}",
        acked.len(),
        body["error"]["message"]
    );
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "backend_unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("stopped taking writes: its disk is full")
            && message.contains("Free space on that disk"),
        "the refusal says what happened and what to do: {message}"
    );
    assert!(!acked.is_empty(), "no job was taken before the disk filled");

    // From the first refusal on, conveyor is never ready again, and it stops by itself.
    let stopped = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut not_ready = 0;
    let status = loop {
        if let Some(status) = dev.try_wait().unwrap() {
            break status;
        }
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            assert_ne!(
                r.status(),
                reqwest::StatusCode::OK,
                "/readyz said ready after the log stopped taking writes"
            );
            not_ready += 1;
        }
        assert!(
            tokio::time::Instant::now() < stopped,
            "conveyor dev kept running for 60 s after its log stopped taking writes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "conveyor dev exited with {status}");
    assert!(
        stderr.contains("error: storage failed") && stderr.contains("then restart conveyor"),
        "the exit says why and what to do:\n{stderr}"
    );
    drop(dev);

    // Space freed, conveyor started again: every acknowledged job is there once and delivered.
    std::fs::remove_file(&filler).unwrap();
    let (hook, second_received) = receiver(Duration::from_millis(100)).await;
    let log = work.path().join("second.log");
    let _show = ShowOnPanic(log.clone());
    let (_dev, base) = start_on_a_free_port(
        |port| config(work.path(), &data, durability, hook, port),
        |c| start(c, &log),
    )
    .await;
    let in_log = ids_in_log(&base, "jobs").await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &in_log {
        *counts.entry(id).or_default() += 1;
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(missing.is_empty(), "acknowledged jobs lost: {missing:?}");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "jobs stored twice: {twice:?}");
    // the refused write is "not confirmed as stored": it may have landed, nothing else may
    assert!(
        in_log.len() <= acked.len() + 1,
        "the log holds {} jobs, {} were acknowledged",
        in_log.len(),
        acked.len()
    );
    let fresh = http
        .post(format!("{base}/v1/topics/jobs/jobs"))
        .json(&serde_json::json!({"type": "t", "payload": "after"}))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), reqwest::StatusCode::CREATED);
    let fresh: serde_json::Value = fresh.json().await.unwrap();
    let fresh = fresh["id"].as_str().unwrap().to_owned();
    let before = first_received.ids();
    let want: HashSet<String> = acked.iter().cloned().chain([fresh.clone()]).collect();
    wait_for(
        Duration::from_secs(60),
        "every acknowledged job delivered",
        || {
            let after = second_received.ids();
            after.contains_key(&fresh)
                && want
                    .iter()
                    .all(|id| before.contains_key(id) || after.contains_key(id))
        },
    )
    .await;
    eprintln!(
        "full disk ({durability}): /readyz refused {not_ready} times before the exit; after the restart all {} acknowledged jobs are in the log once and delivered ({} deliveries before the exit, {} after)",
        want.len(),
        first_received.total(),
        second_received.total()
    );
}
