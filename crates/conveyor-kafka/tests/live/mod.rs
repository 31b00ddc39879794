//! What the live-broker tests share: the broker's address and unique names.

#![allow(dead_code)]

/// The live broker (`CONVEYOR_TEST_BROKERS`, which `scripts/kafka.sh` sets).
pub(crate) fn brokers() -> String {
    std::env::var("CONVEYOR_TEST_BROKERS")
        .expect("set CONVEYOR_TEST_BROKERS=host:port, or run the tests through scripts/kafka.sh")
}

/// A topic or group name unique to this run.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::now_v7().simple())
}
