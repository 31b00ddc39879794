//! The `emails` example program delivers its one email and stops.

use std::process::Command;

#[test]
fn the_example_sends_the_email() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_emails"))
        .args(["--data", &dir.path().display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "sent welcome to ada@example.com\n"
    );
}
