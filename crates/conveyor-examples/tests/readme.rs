//! The README's "Writing workers in Rust" snippet is the code of `src/bin/emails.rs` between its
//! `README` markers, so the README shows a program that compiles; running it delivers the email.

use std::process::Command;

/// The lines between `// README: begin` and `// README: end`, unindented by the first line's
/// indentation.
fn marked(source: &str) -> Vec<String> {
    let lines: Vec<&str> = source
        .lines()
        .skip_while(|l| l.trim() != "// README: begin")
        .skip(1)
        .take_while(|l| l.trim() != "// README: end")
        .collect();
    let indent = lines
        .iter()
        .find(|l| !l.trim().is_empty())
        .map_or(0, |l| l.len() - l.trim_start().len());
    lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").trim_end().to_owned())
        .collect()
}

/// The first ```rust block after the "Writing workers in Rust" heading, without its `use` lines.
fn readme_block(readme: &str) -> Vec<String> {
    readme
        .lines()
        .skip_while(|l| *l != "## Writing workers in Rust")
        .skip_while(|l| !l.starts_with("```rust"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .filter(|l| !l.starts_with("use "))
        .map(|l| l.trim_end().to_owned())
        .skip_while(|l| l.is_empty())
        .collect()
}

#[test]
fn the_readme_shows_the_compiled_example() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/bin/emails.rs")).unwrap();
    let (shown, compiled) = (readme_block(&readme), marked(&source));
    assert!(compiled.len() > 10, "the markers are missing in emails.rs");
    assert_eq!(
        shown, compiled,
        "README.md's \"Writing workers in Rust\" block differs from src/bin/emails.rs between the README markers"
    );
    let used = readme
        .lines()
        .skip_while(|l| *l != "## Writing workers in Rust")
        .find(|l| l.starts_with("use conveyor_runtime"))
        .expect("the README block's use line");
    assert!(source.contains(used), "emails.rs does not `{used}`");
}

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
