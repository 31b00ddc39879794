//! The scheduler's progress in its commit metadata: what the elected member commits after firing,
//! and where a new owner starts each schedule from (see [`crate::time::scheduler`]).

use std::collections::BTreeMap;

use conveyor_core::MAX_COMMIT_METADATA;
use serde::{Deserialize, Serialize};

/// The commit metadata: the progress a new owner starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Handover {
    /// Every tick up to this time (Unix ms) was fired or given up, but those of `behind`.
    pub(super) at: i64,
    /// The schedules the writer knew; `None` when their names did not fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) known: Option<Vec<String>>,
    /// Schedules whose publish kept failing, with their own cursor.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) behind: BTreeMap<String, i64>,
}

impl Handover {
    /// Metadata of at most [`MAX_COMMIT_METADATA`] bytes.
    pub(super) fn encode(mut self) -> String {
        let fits = |h: &Handover| serde_json::to_string(h).expect("serializes");
        let mut s = fits(&self);
        if s.len() > MAX_COMMIT_METADATA {
            self.known = None;
            s = fits(&self);
        }
        while s.len() > MAX_COMMIT_METADATA && self.behind.pop_last().is_some() {
            s = fits(&self);
        }
        s
    }

    /// Where a schedule the previous owner left starts: its own cursor, else `at`; `now` when
    /// the previous owner did not know it.
    pub(super) fn cursor(&self, name: &str, now: i64) -> i64 {
        match &self.known {
            Some(known) if !known.iter().any(|k| k == name) => now,
            _ => self.behind.get(name).copied().unwrap_or(self.at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_fits_the_commit_metadata() {
        let h = Handover {
            at: 1_767_000_000_000,
            known: Some(vec!["a".into(), "b".into()]),
            behind: BTreeMap::from([("b".into(), 1_766_999_000_000)]),
        };
        let s = h.clone().encode();
        assert_eq!(serde_json::from_str::<Handover>(&s).unwrap(), h);
        assert_eq!(h.cursor("a", 5), h.at);
        assert_eq!(h.cursor("b", 5), 1_766_999_000_000);
        assert_eq!(
            h.cursor("new", 5),
            5,
            "a schedule the previous owner did not know"
        );
        // 100 names of 100 characters do not fit: the list goes, every schedule counts as known
        let names: Vec<String> = (0..100).map(|i| format!("{i:0>100}")).collect();
        let big = Handover {
            at: 7,
            known: Some(names.clone()),
            behind: names.iter().map(|n| (n.clone(), 3)).collect(),
        };
        let s = big.encode();
        assert!(s.len() <= MAX_COMMIT_METADATA, "{}", s.len());
        let back: Handover = serde_json::from_str(&s).unwrap();
        assert_eq!(back.known, None);
        assert_eq!(back.cursor("unknown", 5), 7);
        assert!(!back.behind.is_empty() && back.behind.len() < 100);
        // no metadata yet (a first start) is no handover
        assert!(serde_json::from_str::<Handover>("").is_err());
    }
}
