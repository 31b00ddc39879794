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
    let (ok, out, _) =
        conveyor(&[&["lag", "nobody", "--topic", "waitlist.dlq"][..], &url].concat());
    assert!(ok);
    assert!(out.contains("group nobody: total lag 3"), "{out}");
    let (ok, _, err) = conveyor(&[&["lag", "g", "--topic", "missing"][..], &url].concat());
    assert!(!ok);
    assert!(err.contains("unknown_topic"), "{err}");
}
