//! The README's walk-through, run as written, its answers compared with the ones it shows.
//!
//! What runs is read from README.md's "Walk-through" section, in order, so a change to the README
//! changes what runs:
//! - each line of a ```` ```sh ```` block is a command (a line ending in `\` continues on the
//!   next), and the `# ` comment lines right after a command are its documented answer;
//! - an inline code span of the prose that starts with `target/release/` or `curl ` is a
//!   command with no documented answer;
//! - a fenced block right after `<!-- walkthrough: output of PROGRAM -->` is what the background
//!   PROGRAM prints (each line must show up in its output);
//! - the `cargo build` command is not run: it must name every program the walk-through runs
//!   (`--bin X` for `target/release/X`, `--example X` for `target/release/examples/X`), which are
//!   taken from this test's build instead (`CARGO_BIN_EXE_conveyor`, and the receiver example
//!   beside it, which `cargo test --all-targets` builds).
//!
//! The programs that serve (the receiver example, `conveyor dev`) start in the background and are
//! waited for until they listen. Everything runs in a temporary folder holding the repository's
//! `conveyor.toml`, with the API's address (127.0.0.1:8080) and the receiver's (127.0.0.1:9000,
//! its default, given to it as its argument) replaced by free ports in commands and the file, and
//! replaced back in answers; CLI commands reach the API through `CONVEYOR_URL`.
//!
//! Answers: a documented answer that is JSON is compared as JSON (the same keys, the same
//! values), otherwise word by word. `…` stands for what differs from run to run and is matched by
//! shape, never skipped: a bare `…` where JSON has a value must be a number; a string or word
//! with `…` (`"0193…"`, `"2024-12-01T…Z"`) must be an id (a UUID), a timestamp (RFC 3339) or
//! digits, and agree with the characters written around the `…` (hex digit for hex digit, the
//! rest exactly). A command with no documented answer must succeed, and a `curl`'s answer must be
//! JSON that is not an error. Commands that only read (not `curl -X POST`/`-d`, not `conveyor
//! enqueue`) are retried until their answer matches, for at most 30 s (a dead letter lands a
//! moment after its job's `201`); the others run once. Finally `conveyor dev` is stopped with
//! SIGTERM, as the walk-through says, and must exit with status 0.

mod util;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{free_port, Dev};

/// The API's address in the walk-through (`conveyor.toml`'s `[api] listen`).
const API: &str = "127.0.0.1:8080";
/// The receiver's address in the walk-through (the example's default, `conveyor.toml`'s route).
const RECEIVER: &str = "127.0.0.1:9000";
/// What stands for a value that differs from run to run.
const VOLATILE: char = '…';
/// A bare `…` of a documented JSON answer, where JSON has a value, as it is parsed: a number.
const ANY_NUMBER: &str = "…<any number>";
/// How long a command may run, a background program may take to listen, a read be retried.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One thing the walk-through does, with its line in README.md.
#[derive(Debug)]
enum Step {
    /// The build command (checked, not run).
    Build { line: usize, command: String },
    /// A command, with its documented answer if it shows one.
    Run {
        line: usize,
        command: String,
        answer: Option<String>,
    },
    /// What a background program prints.
    Output {
        line: usize,
        program: String,
        text: String,
    },
}

/// The inline code spans of a line of prose.
fn inline_code(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// The steps of README.md's "Walk-through" section, in order.
fn walkthrough(readme: &str) -> Vec<Step> {
    let lines: Vec<(usize, &str)> = readme
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .skip_while(|(_, l)| *l != "## Walk-through")
        .skip(1)
        .take_while(|(_, l)| !l.starts_with("## "))
        .collect();
    let mut steps = Vec::new();
    let mut marker: Option<(usize, String)> = None;
    let mut i = 0;
    while i < lines.len() {
        let (n, line) = lines[i];
        let t = line.trim();
        i += 1;
        if let Some(rest) = t.strip_prefix("<!-- walkthrough:") {
            let m = rest
                .strip_suffix("-->")
                .unwrap_or_else(|| panic!("README.md:{n}: a walkthrough marker ends on its line"))
                .trim();
            let program = m.strip_prefix("output of ").unwrap_or_else(|| {
                panic!(
                    "README.md:{n}: unknown walkthrough marker `{m}` (known: `output of PROGRAM`)"
                )
            });
            marker = Some((n, program.trim().to_owned()));
            continue;
        }
        if let Some(lang) = t.strip_prefix("```") {
            let mut body = Vec::new();
            while i < lines.len() && !lines[i].1.trim().starts_with("```") {
                body.push((lines[i].0, lines[i].1.trim()));
                i += 1;
            }
            i += 1; // the closing fence
            if let Some((_, program)) = marker.take() {
                let text = body.iter().map(|(_, l)| *l).collect::<Vec<_>>().join("\n");
                steps.push(Step::Output {
                    line: n,
                    program,
                    text,
                });
            } else if lang.trim() == "sh" {
                shell_block(&body, &mut steps);
            } else {
                panic!("README.md:{n}: a ```{lang} block in the walk-through is neither `sh` nor after a `<!-- walkthrough: output of PROGRAM -->` marker: this test would skip it");
            }
            continue;
        }
        if let Some((m, _)) = &marker {
            assert!(
                t.is_empty(),
                "README.md:{m}: a walkthrough marker must be followed by a fenced block"
            );
        }
        for span in inline_code(line) {
            if span.starts_with("target/release/") || span.starts_with("curl ") {
                steps.push(Step::Run {
                    line: n,
                    command: span.to_owned(),
                    answer: None,
                });
            }
        }
    }
    steps
}

/// The commands of a ```` ```sh ```` block, each with the comment lines that follow it.
fn shell_block(body: &[(usize, &str)], steps: &mut Vec<Step>) {
    let mut lines = body.iter();
    let mut in_block = false;
    while let Some(&(n, line)) = lines.next() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if let Some(Step::Run { answer, .. }) = steps.last_mut().filter(|_| in_block) {
                let answer = answer.get_or_insert_with(String::new);
                answer.push_str(comment.trim());
                answer.push('\n');
            }
            continue;
        }
        let mut command = line.to_owned();
        while command.ends_with('\\') {
            let (_, next) = lines
                .next()
                .unwrap_or_else(|| panic!("README.md:{n}: `\\` on the block's last line"));
            command.push('\n');
            command.push_str(next);
        }
        in_block = true;
        steps.push(match command.starts_with("cargo build") {
            true => Step::Build { line: n, command },
            false => Step::Run {
                line: n,
                command,
                answer: None,
            },
        });
    }
}

/// `text`'s `…` outside JSON strings (a value that differs from run to run) as [`ANY_NUMBER`].
fn bare_placeholders(text: &str) -> String {
    let (mut out, mut string, mut escaped) = (String::new(), false, false);
    for c in text.chars() {
        match c {
            VOLATILE if !string => out.push_str(&format!("\"{ANY_NUMBER}\"")),
            c => {
                out.push(c);
                if string && escaped {
                    escaped = false;
                } else if string && c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    string = !string;
                }
            }
        }
    }
    out
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// RFC 3339, as conveyor writes it: `2024-12-01T09:30:00.123Z` (fraction and offset optional).
fn is_timestamp(s: &str) -> bool {
    let shape = "dddd-dd-ddTdd:dd:dd";
    if s.len() < shape.len()
        || !s.chars().zip(shape.chars()).all(|(c, d)| match d {
            'd' => c.is_ascii_digit(),
            d => c == d,
        })
    {
        return false;
    }
    let mut rest = &s[shape.len()..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &fraction[digits..];
    }
    rest == "Z"
        || (rest.len() == 6
            && rest.starts_with(['+', '-'])
            && rest[1..].chars().enumerate().all(|(i, c)| match i {
                2 => c == ':',
                _ => c.is_ascii_digit(),
            }))
}

/// Whether `answered` fits `documented`, a string or word with `…`: `answered` is an id, a
/// timestamp or digits, and agrees with what is written before and after the `…`, which stands
/// for at least one character.
fn volatile_fits(documented: &str, answered: &str) -> bool {
    let Some((before, after)) = documented.split_once(VOLATILE) else {
        return documented == answered;
    };
    let kind = is_uuid(answered)
        || is_timestamp(answered)
        || (!answered.is_empty() && answered.chars().all(|c| c.is_ascii_digit()));
    let same = |d: char, a: char| d == a || (d.is_ascii_hexdigit() && a.is_ascii_hexdigit());
    let (b, a): (Vec<char>, Vec<char>) = (before.chars().collect(), after.chars().collect());
    let got: Vec<char> = answered.chars().collect();
    kind && got.len() > b.len() + a.len()
        && b.iter().zip(&got).all(|(d, c)| same(*d, *c))
        && a.iter()
            .rev()
            .zip(got.iter().rev())
            .all(|(d, c)| same(*d, *c))
}

/// Where `answered` differs from `documented`, one line per difference, by JSON path.
fn json_diff(path: &str, documented: &Value, answered: &Value, out: &mut Vec<String>) {
    match (documented, answered) {
        (Value::String(d), a) if d == ANY_NUMBER => {
            if !a.is_i64() && !a.is_u64() {
                out.push(format!("{path}: documented `…` (a number), answered {a}"));
            }
        }
        (Value::String(d), Value::String(a)) if d.contains(VOLATILE) => {
            if !volatile_fits(d, a) {
                out.push(format!(
                    "{path}: documented {documented} (an id, time or number of that shape), answered {answered}"
                ));
            }
        }
        (Value::Object(d), Value::Object(a)) => {
            for (k, v) in d {
                match a.get(k) {
                    Some(w) => json_diff(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!("{path}.{k}: documented {v}, not answered")),
                }
            }
            for (k, w) in a {
                if !d.contains_key(k) {
                    out.push(format!("{path}.{k}: answered {w}, not documented"));
                }
            }
        }
        (Value::Array(d), Value::Array(a)) if d.len() == a.len() => {
            for (i, (v, w)) in d.iter().zip(a).enumerate() {
                json_diff(&format!("{path}[{i}]"), v, w, out);
            }
        }
        (d, a) if d == a => {}
        (d, a) => out.push(format!("{path}: documented {d}, answered {a}")),
    }
}

/// Whether a line of output fits a documented line, word by word.
fn line_fits(documented: &str, answered: &str) -> bool {
    let (d, a): (Vec<&str>, Vec<&str>) = (
        documented.split_whitespace().collect(),
        answered.split_whitespace().collect(),
    );
    d.len() == a.len() && d.iter().zip(&a).all(|(d, a)| volatile_fits(d, a))
}

/// Where `answered` differs from the documented answer (empty: it matches).
fn compare(documented: &str, answered: &str) -> Vec<String> {
    let mut out = Vec::new();
    match serde_json::from_str::<Value>(&bare_placeholders(documented)) {
        Ok(d) => match serde_json::from_str::<Value>(answered.trim()) {
            Ok(a) => json_diff("$", &d, &a, &mut out),
            Err(e) => out.push(format!("the answer is not one JSON value ({e})")),
        },
        Err(_) => {
            let (d, a): (Vec<&str>, Vec<&str>) = (
                documented.trim().lines().collect(),
                answered.trim().lines().collect(),
            );
            if d.len() != a.len() {
                out.push(format!(
                    "documented {} lines, answered {}",
                    d.len(),
                    a.len()
                ));
            }
            for (i, (d, a)) in d.iter().zip(&a).enumerate() {
                if !line_fits(d, a) {
                    out.push(format!("line {}: documented `{d}`, answered `{a}`", i + 1));
                }
            }
        }
    }
    out
}

/// Whether a command changes something (and so runs once, not retried).
fn writes(command: &str) -> bool {
    command.contains("-X POST") || command.contains(" -d ") || command.contains(" enqueue ")
}

/// A program of the walk-through that serves until stopped: started in the background.
fn serves(command: &str) -> bool {
    let words: Vec<&str> = command.split_whitespace().collect();
    words.first() == Some(&"target/release/examples/receiver")
        || (words.first() == Some(&"target/release/conveyor") && words.get(1) == Some(&"dev"))
}

/// A program started in the background: its command as written, the process, its output files.
struct Background {
    command: String,
    process: Dev,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// The walk-through's world: the temporary folder, the ports, the programs in the background.
struct Walk {
    dir: tempfile::TempDir,
    bin: PathBuf,
    api: String,
    receiver: String,
    background: Vec<Background>,
    runs: usize,
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Walk {
    /// A command or text as it runs here: this build's programs, free ports.
    fn place(&self, text: &str) -> String {
        text.replace("target/release/", &format!("{}/", self.bin.display()))
            .replace(API, &self.api)
            .replace(RECEIVER, &self.receiver)
    }

    /// An answer as the README would show it: its addresses.
    fn unplace(&self, text: &str) -> String {
        text.replace(&self.api, API)
            .replace(&self.receiver, RECEIVER)
    }

    /// `bash -c line` in the folder, writing its output to two new files there.
    fn bash(&mut self, line: &str) -> (Dev, PathBuf, PathBuf) {
        self.runs += 1;
        let out = self.dir.path().join(format!("{}.stdout", self.runs));
        let err = self.dir.path().join(format!("{}.stderr", self.runs));
        let mut c = Command::new("bash");
        c.args(["-c", line])
            .current_dir(self.dir.path())
            .env("CONVEYOR_URL", format!("http://{}", self.api))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        for (k, _) in std::env::vars() {
            if k.starts_with("CONVEYOR_") && k != "CONVEYOR_URL" {
                c.env_remove(k);
            }
        }
        (Dev(c.spawn().expect("run bash")), out, err)
    }

    /// Runs a command to its end (at most [`COMMAND_TIMEOUT`]); returns its output.
    fn run(&mut self, line: usize, command: &str) -> String {
        let placed = self.place(command);
        let (mut child, out, err) = self.bash(&placed);
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < COMMAND_TIMEOUT,
                "README.md:{line}: `{command}` still running after {COMMAND_TIMEOUT:?}; output: {}{}",
                read(&out),
                read(&err)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.unplace(&read(&out));
        assert!(
            status.success(),
            "README.md:{line}: `{command}` failed ({status}): {stdout}{}",
            self.unplace(&read(&err))
        );
        stdout
    }

    /// Starts a serving program and waits until it listens.
    fn start(&mut self, line: usize, command: &str) {
        let mut placed = self.place(command);
        if command.contains("examples/receiver") && !command.contains(RECEIVER) {
            placed = format!("{placed} {}", self.receiver); // its address: the first argument
        }
        let (mut process, stdout, stderr) = self.bash(&format!("exec {placed}"));
        let dev = command.contains(" dev");
        let started = Instant::now();
        loop {
            if let Some(status) = process.try_wait().unwrap() {
                panic!(
                    "README.md:{line}: `{command}` exited ({status}) before it listened: {}{}",
                    read(&stdout),
                    read(&stderr)
                );
            }
            let ready = match dev {
                true => {
                    http_get(&self.api, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
                }
                false => std::net::TcpStream::connect(&self.receiver).is_ok(),
            };
            if ready {
                break;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "README.md:{line}: `{command}` did not listen within {START_TIMEOUT:?}: {}{}",
                read(&stdout),
                read(&stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("$ {command} &");
        self.background.push(Background {
            command: command.to_owned(),
            process,
            stdout,
            stderr,
        });
    }

    /// The background program started by a command beginning with `program`.
    fn program(&self, line: usize, program: &str) -> &Background {
        self.background
            .iter()
            .find(|b| b.command.split_whitespace().next() == Some(program))
            .unwrap_or_else(|| {
                panic!("README.md:{line}: the output of `{program}`, which the walk-through has not started")
            })
    }
}

/// `GET path` on `addr` over HTTP/1.1; the whole answer, or `None` if the connection failed.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// Shortened for the transcript.
fn short(text: &str) -> String {
    let text = text.trim_end();
    match text.char_indices().nth(400) {
        Some((i, _)) => format!("{}… ({} bytes)", &text[..i], text.len()),
        None => text.to_owned(),
    }
}

#[test]
fn the_readme_walkthrough_answers_as_documented() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let steps = walkthrough(&readme);
    let builds: Vec<&String> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Build { command, .. } => Some(command),
            _ => None,
        })
        .collect();
    let answers = steps
        .iter()
        .filter(|s| {
            matches!(
                s,
                Step::Run {
                    answer: Some(_),
                    ..
                }
            )
        })
        .count();
    assert!(
        builds.len() == 1 && answers > 0 && steps.len() > 3,
        "README.md's \"## Walk-through\" must show one `cargo build` and commands with documented answers; found: {steps:#?}"
    );
    assert!(
        steps
            .iter()
            .any(|s| matches!(s, Step::Run { answer: Some(a), .. } if a.contains("\"partition\""))),
        "no documented answer of the walk-through shows a partition: {steps:#?}"
    );

    // the one build names every program the walk-through runs, which this test's build made
    let bin = Path::new(env!("CARGO_BIN_EXE_conveyor"))
        .parent()
        .unwrap()
        .to_owned();
    let build: Vec<&str> = builds[0].split_whitespace().collect();
    for step in &steps {
        let (Step::Run { line, command, .. } | Step::Build { line, command }) = step else {
            continue;
        };
        let program = command.split_whitespace().next().unwrap();
        if program == "curl" || program == "cargo" {
            continue;
        }
        let name = program.strip_prefix("target/release/").unwrap_or_else(|| {
            panic!("README.md:{line}: `{program}` is neither curl nor a program of the build under target/release/")
        });
        let (flag, name) = match name.strip_prefix("examples/") {
            Some(example) => ("--example", example),
            None => ("--bin", name),
        };
        assert!(
            build.windows(2).any(|w| w == [flag, name]),
            "README.md:{line}: `{program}` is not built by the walk-through's `{}` (no `{flag} {name}`)",
            builds[0]
        );
        let built = match flag {
            "--example" => bin.join("examples").join(name),
            _ => bin.join(name),
        };
        assert!(
            built.exists(),
            "{} is missing: the walk-through runs it from this build; `cargo test --all-targets` \
             (scripts/test.sh) builds it, or `cargo build -p conveyor {flag} {name}`",
            built.display()
        );
    }

    // a temporary folder with the repository's conveyor.toml, on free ports
    let config = std::fs::read_to_string(root().join("conveyor.toml")).unwrap();
    assert!(
        config.contains(&format!("listen = \"{API}\""))
            && config.contains(&format!("url = \"http://{RECEIVER}/hook\"")),
        "conveyor.toml no longer listens on {API} or routes to the receiver at {RECEIVER}; update this test"
    );
    let (api, receiver) = loop {
        let (a, r) = (free_port(), free_port());
        if a != r {
            break (format!("127.0.0.1:{a}"), format!("127.0.0.1:{r}"));
        }
    };
    let mut walk = Walk {
        dir: tempfile::tempdir().unwrap(),
        bin,
        api,
        receiver,
        background: Vec::new(),
        runs: 0,
    };
    std::fs::write(walk.dir.path().join("conveyor.toml"), walk.place(&config)).unwrap();

    let started = Instant::now();
    let mut compared = 0;
    for step in &steps {
        match step {
            Step::Build { command, .. } => eprintln!("$ {command}   # not run: this test's build"),
            Step::Run { line, command, .. } if serves(command) => walk.start(*line, command),
            Step::Run {
                line,
                command,
                answer: None,
            } => {
                let out = walk.run(*line, command);
                eprintln!("$ {command}\n{}", short(&out));
                if command.starts_with("curl ") {
                    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| {
                        panic!("README.md:{line}: `{command}` answered no JSON ({e}): {out}")
                    });
                    assert!(
                        v.get("error").is_none(),
                        "README.md:{line}: `{command}` answered an error: {out}"
                    );
                }
            }
            Step::Run {
                line,
                command,
                answer: Some(documented),
            } => {
                let deadline = Instant::now() + ANSWER_TIMEOUT;
                let (out, diff) = loop {
                    let out = walk.run(*line, command);
                    let diff = compare(documented, &out);
                    if diff.is_empty() || writes(command) || Instant::now() > deadline {
                        break (out, diff);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                };
                eprintln!("$ {command}\n{}", short(&out));
                assert!(
                    diff.is_empty(),
                    "README.md:{line}: `{command}` answered other than documented:\n  {}\ndocumented:\n{documented}answered:\n{out}",
                    diff.join("\n  ")
                );
                compared += 1;
            }
            Step::Output {
                line,
                program,
                text,
            } => {
                let deadline = Instant::now() + ANSWER_TIMEOUT;
                let background = walk.program(*line, program);
                loop {
                    let printed = walk.unplace(&read(&background.stdout));
                    let missing: Vec<&str> = text
                        .lines()
                        .filter(|d| !printed.lines().any(|p| line_fits(d, p)))
                        .collect();
                    if missing.is_empty() {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "README.md:{line}: `{program}` did not print, within {ANSWER_TIMEOUT:?}:\n{}\nit printed:\n{printed}{}",
                        missing.join("\n"),
                        read(&background.stderr)
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                eprintln!("({program} printed)\n{text}");
                compared += 1;
            }
        }
    }
    assert_eq!(
        compared,
        answers
            + steps
                .iter()
                .filter(|s| matches!(s, Step::Output { .. }))
                .count()
    );

    // "Stop with Ctrl-C or SIGTERM": conveyor dev drains and exits with status 0
    let section: String = readme
        .lines()
        .skip_while(|l| *l != "## Walk-through")
        .take_while(|l| !l.starts_with("## Writing"))
        .collect();
    assert!(
        section.contains("SIGTERM"),
        "the walk-through no longer says how to stop conveyor"
    );
    let dev = walk
        .background
        .iter_mut()
        .find(|b| serves(&b.command) && b.command.contains(" dev"))
        .expect("the walk-through starts conveyor dev");
    let pid = dev.process.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let stop = Instant::now();
    let status = loop {
        if let Some(s) = dev.process.try_wait().unwrap() {
            break s;
        }
        assert!(
            stop.elapsed() < Duration::from_secs(40),
            "conveyor dev still running 40 s after SIGTERM: {}",
            read(&dev.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "conveyor dev exited with {status} after SIGTERM: {}",
        read(&dev.stderr)
    );
    eprintln!(
        "walk-through: {} steps, {compared} answers compared, in {:.1} s",
        steps.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn volatile_values_are_matched_by_shape() {
    let id = "01a25256-91cf-755f-b4cc-f4027982bfa5";
    assert!(volatile_fits("0193…", id));
    assert!(!volatile_fits("0193…", "0193 is not an id"));
    assert!(!volatile_fits("x…", id));
    assert!(volatile_fits("2024-12-01T…Z", "2026-12-07T21:08:54.915Z"));
    assert!(!volatile_fits("2024-12-01T…Z", "yesterday"));
    assert!(volatile_fits("…", "2"));
    let documented = r#"{"id":"0193…","topic":"emails","partition":0,"offset":…}"#;
    assert!(compare(
        documented,
        &format!(r#"{{"offset":7,"partition":0,"topic":"emails","id":"{id}"}}"#)
    )
    .is_empty());
    let mut diff = compare(
        documented,
        &format!(r#"{{"id":"{id}","topic":"emails","partition":1,"offset":"7"}}"#),
    );
    diff.sort();
    assert_eq!(
        diff,
        [
            "$.offset: documented `…` (a number), answered \"7\"",
            "$.partition: documented 0, answered 1"
        ]
    );
    assert_eq!(
        compare(
            documented,
            r#"{"id":"0193","topic":"emails","partition":0,"offset":0,"extra":1}"#
        )
        .len(),
        2
    );
    assert!(!compare("a b", "").is_empty());
}
