//! A journal damaged in the middle (64 random bytes, as a disk fault would leave): fjall recovers
//! up to the damage and drops the rest, so the log would open with fewer records and lower high
//! watermarks, and new records would reuse offsets consumers already committed. The start is
//! refused instead, naming the partitions and what to do (issue 14 item 9).

use std::path::{Path, PathBuf};

use conveyor_core::{Backend, Error, Record, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap();
        b.create_topic(&TopicSpec::new("jobs", 2)).await.unwrap();
        for i in 0..100 {
            let batch = (0..10)
                .map(|j| Record::new(format!("record {i}-{j} {}", "x".repeat(200))))
                .collect();
            b.publish("jobs", batch).await.unwrap();
        }
        b.close().await.unwrap();
    }
    // the journal: the largest file fjall wrote
    let journal = files(dir.path())
        .into_iter()
        .filter(|p| !p.ends_with("conveyor-watermarks.json"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&journal).unwrap();
    // the journal file is preallocated: damage the middle of what was written
    let used = bytes.iter().rposition(|b| *b != 0).unwrap();
    let mid = used / 2;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in &mut bytes[mid..mid + 64] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&journal, &bytes).unwrap();

    match EmbeddedBackend::open(EmbeddedConfig::new(dir.path())) {
        Ok(b) => {
            let info = b.describe_topic("jobs").await.unwrap().unwrap();
            panic!(
                "the damaged log ({}) opened with {} of 1000 records",
                journal.display(),
                info.retained()
            );
        }
        Err(Error::Corrupt(e)) => {
            assert!(e.contains("lost acknowledged records"), "{e}");
            assert!(e.contains("jobs/"), "names the partitions: {e}");
            assert!(
                e.contains("Restore the data folder"),
                "says what to do: {e}"
            );
        }
        Err(e) => panic!("refused for another reason: {e}"),
    }
}

/// Under a steady stream of writes (the writer never idles) the high watermarks are still
/// recorded, about once a second, not only at close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_are_recorded_under_steady_writes() {
    let dir = tempfile::tempdir().unwrap();
    let b = EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap();
    b.create_topic(&TopicSpec::new("jobs", 1)).await.unwrap();
    // eight publishers keep the writer's queue from ever running empty
    let b = std::sync::Arc::new(b);
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let b = std::sync::Arc::clone(&b);
            tokio::spawn(async move {
                let mut n = 0;
                while started.elapsed() < std::time::Duration::from_millis(2500) {
                    b.publish("jobs", vec![Record::new("x")]).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut written = 0;
    for t in tasks {
        written += t.await.unwrap();
    }
    let recorded: std::collections::BTreeMap<String, Vec<i64>> = serde_json::from_slice(
        &std::fs::read(dir.path().join("conveyor-watermarks.json")).unwrap(),
    )
    .unwrap();
    let high = recorded.get("jobs").map_or(0, |h| h[0]);
    assert!(
        high > 0 && high <= written,
        "recorded {high} while {written} records were written over 2.5 s"
    );
    b.close().await.unwrap();
}
