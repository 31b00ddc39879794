//! Each partition's high watermark, recorded outside the log's journal, so a damaged journal is
//! noticed at start instead of silently giving back offsets that consumers already saw.
//!
//! fjall recovers a journal up to its first damaged batch and drops the rest
//! (`RecoveryMode::TolerateCorruptTail`): after a disk fault in the middle of the journal the log
//! opens with fewer records and lower high watermarks, and new records would reuse offsets that
//! were delivered and committed. kill -9 cannot cause this (a torn tail is only what was never
//! acknowledged); disk faults can.
//!
//! The writer thread records the high watermarks in `conveyor-watermarks.json` about once a
//! second and at close, only ever values that are durable (after an fsync of the journal), by
//! writing a temporary file, syncing it and renaming it over the old one. At open, a partition
//! whose recovered high watermark is below the recorded one (or a recorded topic that is gone)
//! stops the start with [`Error::Corrupt`] naming the partitions and the ways out.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use conveyor_core::{Error, Result};

/// The file, in the data folder.
pub(crate) const FILE: &str = "conveyor-watermarks.json";

/// Topic -> high watermark per partition.
pub(crate) type Watermarks = BTreeMap<String, Vec<i64>>;

/// The recorded watermarks; none when the file does not exist (a new or older data folder).
pub(crate) fn read(dir: &Path) -> Result<Watermarks> {
    match std::fs::read(dir.join(FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Error::Corrupt(format!(
                "{} is not readable ({e}); it only guards against a damaged journal: delete it to start without that check",
                dir.join(FILE).display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Watermarks::new()),
        Err(e) => Err(Error::Storage(format!("{}: {e}", dir.join(FILE).display()))),
    }
}

/// Replaces the recorded watermarks (atomically: a crash leaves the old or the new file).
pub(crate) fn write(dir: &Path, marks: &Watermarks) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(marks).expect("watermarks serialize"))?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Refuses a log that went back behind what was recorded.
pub(crate) fn check(dir: &Path, recorded: &Watermarks, recovered: &Watermarks) -> Result<()> {
    let mut lost = Vec::new();
    for (topic, highs) in recorded {
        let now = recovered.get(topic);
        for (p, &high) in highs.iter().enumerate() {
            let got = now.and_then(|n| n.get(p)).copied();
            if got.is_none_or(|g| g < high) {
                lost.push(format!(
                    "{topic}/{p}: high watermark {} in the journal, {high} recorded",
                    got.map_or("missing".to_owned(), |g| g.to_string())
                ));
            }
        }
    }
    if lost.is_empty() {
        return Ok(());
    }
    Err(Error::Corrupt(format!(
        "the embedded log at {} lost acknowledged records (its journal is damaged, e.g. by a disk fault): {}. \
         Starting would hand out offsets that consumers already committed. Restore the data folder from a backup; \
         or, to keep what is left and never reuse an offset, move the records you need elsewhere and start with a fresh data folder",
        dir.display(),
        lost.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_behind_its_record_is_refused_and_one_ahead_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let recorded = Watermarks::from([("a".into(), vec![10, 5]), ("gone".into(), vec![1])]);
        write(dir.path(), &recorded).unwrap();
        let back = read(dir.path()).unwrap();
        assert_eq!(back, recorded);
        let ahead = Watermarks::from([("a".into(), vec![12, 5, 0]), ("gone".into(), vec![1])]);
        check(dir.path(), &back, &ahead).unwrap();
        let behind = Watermarks::from([("a".into(), vec![10, 4])]);
        let e = check(dir.path(), &back, &behind).unwrap_err().to_string();
        assert!(
            e.contains("a/1: high watermark 4 in the journal, 5 recorded"),
            "{e}"
        );
        assert!(e.contains("gone/0: high watermark missing"), "{e}");
        assert!(e.contains("Restore the data folder"), "{e}");
        assert!(read(&dir.path().join("nowhere")).unwrap().is_empty());
    }
}
