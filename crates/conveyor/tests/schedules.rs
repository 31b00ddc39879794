//! Cron schedules end to end on the embedded backend: `conveyor schedules put` a schedule firing
//! every second, its jobs reach a webhook once per second with `Conveyor-Schedule` and
//! `Conveyor-Scheduled-At`; `schedules list` shows it beside the configuration's schedule, which
//! the CLI cannot change; `schedules delete` stops it. (Two processes on Kafka:
//! `schedules_live.rs`.)

#[path = "util/ticks.rs"]
mod ticks;
mod util;

use std::time::Duration;

use ticks::{assert_every_second, now_ms, percentile, tick_receiver};
use util::{conveyor, start_dev_on_a_free_port, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_put_from_the_cli_fire_every_second_until_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, ticks) = tick_receiver().await;
    let (_dev, base) = start_dev_on_a_free_port(|port| {
        let path = dir.path().join(format!("conveyor-{port}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"data_dir = "{}"
[api]
listen = "127.0.0.1:{port}"
[[topics]]
name = "ticks"
partitions = 2
[[routes]]
topic = "ticks"
url = "http://{hook}/hook"
[[schedules]]
name = "nightly"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
topic = "ticks"
type = "report"
"#,
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        path
    })
    .await;
    let url = ["--url", base.as_str()];
    let (ok, out, err) = conveyor(
        &[
            &["schedules", "put", "every-second", "--cron", "* * * * * *"][..],
            &[
                "--topic",
                "ticks",
                "--type",
                "tick",
                "--payload",
                "{\"n\": 1}",
            ],
            &["--missed", "once"],
            &url,
        ]
        .concat(),
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("schedule every-second") && out.contains("once"),
        "{out}"
    );
    wait_for(Duration::from_secs(20), "5 ticks delivered", || {
        ticks.of("every-second").len() >= 5
    })
    .await;

    let (ok, out, err) = conveyor(&[&["schedules", "list"][..], &url].concat());
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[1].starts_with("every-second") && lines[1].contains("api"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("nightly")
            && lines[2].contains("config")
            && lines[2].contains("Europe/Berlin"),
        "{out}"
    );
    // the configuration's schedule is read-only through the API; bad input names the field
    let put = |name: &str, cron: &str| {
        conveyor(
            &[
                &[
                    "schedules",
                    "put",
                    name,
                    "--cron",
                    cron,
                    "--topic",
                    "ticks",
                    "--type",
                    "t",
                ][..],
                &url,
            ]
            .concat(),
        )
    };
    let (ok, _, err) = put("nightly", "* * * * *");
    assert!(!ok && err.contains("409 schedule_in_config"), "{err}");
    let (ok, _, err) = put("bad", "61 * * * *");
    assert!(
        !ok && err.contains("422 invalid_field") && err.contains("cron"),
        "{err}"
    );
    let (ok, _, err) = conveyor(&[&["schedules", "delete", "nightly"][..], &url].concat());
    assert!(!ok && err.contains("409 schedule_in_config"), "{err}");

    let (ok, out, err) = conveyor(&[&["schedules", "delete", "every-second"][..], &url].concat());
    assert!(ok, "{out}{err}");
    let deleted_at = now_ms();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let runs = ticks.of("every-second");
    let after: Vec<i64> = runs
        .iter()
        .map(|t| t.tick)
        .filter(|t| *t > deleted_at + 500)
        .collect();
    assert!(after.is_empty(), "ticks after the delete: {after:?}");
    let all: Vec<i64> = runs.iter().map(|t| t.tick).collect();
    assert_every_second("every-second", &all);
    assert!(ticks.repeated().is_empty(), "{:?}", ticks.repeated());
    assert!(ticks.of("nightly").is_empty());
    let mut late: Vec<i64> = runs.iter().map(|t| t.received - t.tick).collect();
    late.sort();
    eprintln!(
        "schedules (embedded): {} ticks, tick to webhook p50 {} ms, max {} ms",
        late.len(),
        percentile(&late, 0.5),
        late.last().unwrap()
    );
    assert!(late[0] >= 0, "a tick ran early: {late:?}");
}
