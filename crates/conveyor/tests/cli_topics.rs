//! `conveyor topics apply`, `topics list` and `lag`, as a user runs them against `conveyor dev`.

mod util;

use std::time::Duration;

use util::{conveyor, free_port, start_dev, wait_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_apply_shows_a_plan_applies_it_once_and_lag_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("conveyor.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let _dev = start_dev(&config);
    wait_ok(&base, "/readyz", Duration::from_secs(30)).await;

    let file = dir.path().join("topics.toml");
    std::fs::write(
        &file,
        r#"
[defaults]
replication_factor = 3
min_insync_replicas = 2
retention = "7d"

[[topics]]
name = "waitlist.email.welcome"
partitions = 10

[[topics]]
name = "waitlist.events.user.signup"
partitions = 10
retention = "1y"

[[topics]]
name = "waitlist.dlq"
partitions = 3
retention = "1y"
"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let url = ["--url", base.as_str()];

    let (ok, out, err) = conveyor(&[&["topics", "apply", "-f", f, "--dry-run"][..], &url].concat());
    assert!(ok, "{err}");
    assert!(out.contains("+ waitlist.email.welcome (create)"), "{out}");
    assert!(
        out.contains("retention_ms         - -> 31536000000"),
        "{out}"
    );
    assert!(
        out.contains("plan: 3 to create, 0 to update, 0 unchanged, 0 refused"),
        "{out}"
    );

    // no terminal, no --yes: nothing is applied
    let (ok, _, err) = conveyor(&[&["topics", "apply", "-f", f][..], &url].concat());
    assert!(!ok);
    assert!(err.contains("pass --yes"), "{err}");
    let (_, out, _) = conveyor(&[&["topics", "list"][..], &url].concat());
    assert!(!out.contains("waitlist"), "{out}");

    let (ok, out, err) = conveyor(&[&["topics", "apply", "-f", f, "--yes"][..], &url].concat());
    assert!(ok, "{err}");
    assert!(out.contains("applied: 3 created, 0 updated"), "{out}");
    let (ok, out, _) = conveyor(&[&["topics", "apply", "-f", f, "--yes"][..], &url].concat());
    assert!(ok);
    assert!(out.contains("nothing to do"), "{out}");

    let (_, out, _) = conveyor(&[&["topics", "list"][..], &url].concat());
    let line = out
        .lines()
        .find(|l| l.starts_with("waitlist.dlq "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains(" 3 ") && line.contains("2:0-0"), "{line}");

    // a shrink is refused with the reason, and exits non-zero
    std::fs::write(
        &file,
        "[[topics]]\nname = \"waitlist.dlq\"\npartitions = 1\n",
    )
    .unwrap();
    let (ok, out, err) = conveyor(&[&["topics", "apply", "-f", f, "--yes"][..], &url].concat());
    assert!(!ok);
    assert!(
        out.contains("refused: partitions cannot shrink (3 -> 1)"),
        "{out}"
    );
    assert!(err.contains("nothing was applied"), "{err}");

    // a topic made by `topics create` with `args`, then a topics file with `file` for it: the
    // plan finds nothing to change
    let created_as_filed = |name: &str, args: &[&str], file: &str| {
        let (ok, _, err) = conveyor(&[&["topics", "create", name][..], args, &url].concat());
        assert!(ok, "{err}");
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, format!("[[topics]]\nname = \"{name}\"\n{file}")).unwrap();
        let p = path.to_str().unwrap();
        let (ok, out, err) =
            conveyor(&[&["topics", "apply", "-f", p, "--dry-run"][..], &url].concat());
        assert!(ok, "{err}");
        assert!(
            out.contains("plan: 0 to create, 0 to update, 1 unchanged, 0 refused"),
            "{out}"
        );
    };
    // `topics create` without --retention-ms keeps the default retention (7 days), as a topics
    // file without one does (it used to create it "forever")
    created_as_filed("plain", &[], "");
    // `--retention-ms forever` keeps records forever, as a file saying so
    created_as_filed(
        "kept",
        &["--retention-ms", "forever"],
        "retention = \"forever\"\n",
    );
    let (ok, _, err) = conveyor(
        &[
            &["topics", "create", "bad", "--retention-ms", "soon"][..],
            &url,
        ]
        .concat(),
    );
    assert!(!ok && err.contains("`forever`"), "{err}");

    // lag of a group that has not consumed, then of one that has
    for i in 0..3 {
        let payload = format!("{{\"i\":{i}}}");
        let (ok, _, err) = conveyor(
            &[
                &[
                    "enqueue",
                    "waitlist.dlq",
                    "--type",
                    "t",
                    "--payload",
                    &payload,
                ][..],
                &url,
            ]
            .concat(),
        );
        assert!(ok, "{err}");
    }
    // a group that never ran names nothing real: an error, not a lag of everything
    let (ok, _, err) =
        conveyor(&[&["lag", "nobody", "--topic", "waitlist.dlq"][..], &url].concat());
    assert!(!ok && err.contains("unknown_group"), "{err}");
    let (ok, _, err) = conveyor(&[&["lag", "g", "--topic", "missing"][..], &url].concat());
    assert!(!ok);
    assert!(err.contains("unknown_topic"), "{err}");
}

/// Names go into URLs percent-encoded: a group named with `/`, `#`, `?`, `%`, a space and a
/// non-ASCII letter is found by `lag`, and `enqueue` into `emails/jobs#` is refused instead of
/// landing in `emails`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_url_characters_address_what_they_name() {
    let (hook, received) = util::receiver(Duration::from_millis(1)).await;
    let group = "team/mailers#1 ?%ü";
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("conveyor.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[[topics]]\nname = \"emails\"\npartitions = 1\n[[routes]]\ntopic = \"emails\"\nurl = \"http://{hook}/hook\"\ngroup = \"{group}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let _dev = start_dev(&config);
    wait_ok(&base, "/readyz", Duration::from_secs(30)).await;
    let url = ["--url", base.as_str()];

    let (ok, _, err) =
        conveyor(&[&["enqueue", "emails", "-t", "x", "-p", "{}"][..], &url].concat());
    assert!(ok, "{err}");
    util::wait_for(Duration::from_secs(30), "the job delivered", || {
        received.total() == 1
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out, err) = conveyor(&[&["lag", group, "--topic", "emails"][..], &url].concat());
        assert!(ok, "lag of {group:?}: {err}");
        if out.contains("total lag 0") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (ok, _, err) = conveyor(
        &[
            &["enqueue", "emails/jobs#", "-t", "x", "-p", "{}"][..],
            &url,
        ]
        .concat(),
    );
    assert!(!ok, "enqueue into `emails/jobs#` succeeded");
    assert!(err.contains("emails/jobs#"), "{err}");
    let (_, out, _) = conveyor(&[&["topics", "list"][..], &url].concat());
    let line = out.lines().find(|l| l.starts_with("emails ")).unwrap();
    assert!(
        line.contains("0:0-1"),
        "only the first job is in emails: {line}"
    );
}

/// `conveyor tail` (follow) prints records of partitions added after it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_partitions_added_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("conveyor.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[[topics]]\nname = \"grow\"\npartitions = 1\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let _dev = start_dev(&config);
    wait_ok(&base, "/readyz", Duration::from_secs(30)).await;
    let mut tail = util::Dev(
        std::process::Command::new(env!("CARGO_BIN_EXE_conveyor"))
            .args(["tail", "grow", "--url", &base])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let file = dir.path().join("topics.toml");
    std::fs::write(&file, "[[topics]]\nname = \"grow\"\npartitions = 4\n").unwrap();
    let (ok, out, err) = conveyor(&[
        "topics",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--yes",
        "--url",
        &base,
    ]);
    assert!(ok, "{out}{err}");
    for i in 0..20 {
        let (ok, _, err) = conveyor(&[
            "enqueue",
            "grow",
            "-t",
            "t",
            "-k",
            &format!("k{i}"),
            "-p",
            &format!("{{\"i\":{i}}}"),
            "--url",
            &base,
        ]);
        assert!(ok, "{err}");
    }
    // read what tail printed for a while, then stop it
    tokio::time::sleep(Duration::from_secs(3)).await;
    tail.kill().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(tail.stdout.as_mut().unwrap(), &mut out).unwrap();
    let lines = out.lines().filter(|l| l.contains("\"partition\"")).count();
    assert_eq!(lines, 20, "tail printed {lines} of 20 records:\n{out}");
}
