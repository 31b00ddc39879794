//! The README's "Writing workers in Rust" block is `examples/first_job.rs`, line for line, so the
//! program a reader copies is the one that compiles here (the block itself runs as a doc test of
//! this crate: `ReadmeDoctests` in `src/lib.rs`), and it stays under 40 lines.

/// The first ```rust block after the "Writing workers in Rust" heading.
fn readme_block(readme: &str) -> Option<String> {
    let mut lines = readme
        .lines()
        .skip_while(|l| *l != "## Writing workers in Rust")
        .skip_while(|l| !l.starts_with("```"));
    let fence = lines.next()?;
    assert_eq!(
        fence, "```rust",
        "the README's Rust block must be a plain ```rust block (a doc test), not `{fence}`"
    );
    Some(
        lines
            .take_while(|l| !l.starts_with("```"))
            .map(|l| format!("{l}\n"))
            .collect(),
    )
}

#[test]
fn the_readme_shows_the_first_job_example() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{dir}/../../README.md")).unwrap();
    let example = std::fs::read_to_string(format!("{dir}/examples/first_job.rs")).unwrap();
    let shown = readme_block(&readme)
        .expect("README.md has no Rust block under \"Writing workers in Rust\"");
    assert_eq!(
        shown, example,
        "README.md's \"Writing workers in Rust\" block differs from crates/conveyor/examples/first_job.rs: copy the file into the block"
    );
    let lines = example.lines().count();
    assert!(
        lines < 40,
        "first_job.rs has {lines} lines; the promise is under 40"
    );
    assert!(
        !example.contains("conveyor_") && example.contains("use conveyor::"),
        "the example uses only the `conveyor` crate"
    );
}
