//! Logging set-up: text lines (coloured only on a terminal) or one JSON object per line, chosen
//! before the configuration is loaded ([`conveyor_server::config::log_format`]), and the
//! start-up lines of `conveyor dev`, which follow the same format.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use conveyor_server::config::LogFormat;

/// Whether lines are JSON (set once by [`init`]).
static JSON: AtomicBool = AtomicBool::new(false);

/// Starts logging to stderr in the format `CONVEYOR_LOG_FORMAT` or the configuration at
/// `config` asks for; lines are filtered by `CONVEYOR_LOG`. A format that cannot be read starts
/// text logging and is returned as the error (a server command stops on it; a client command
/// goes on: its log format does not matter).
pub(crate) fn init(config: Option<&Path>) -> Result<(), conveyor_server::config::ConfigError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let read = conveyor_server::config::log_format(config, &env);
    let format = read.as_ref().copied().unwrap_or_default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONVEYOR_LOG")
        .unwrap_or_else(|_| conveyor::log::DEFAULT_FILTER.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => {
            JSON.store(true, Ordering::Relaxed);
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .init()
        }
        // colour codes only for a terminal: logs collected from a pipe or file stay plain text
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    read.map(|_| ())
}

/// Writes one line for people: as it is to stderr, or as a JSON log line's message.
pub(crate) fn say_line(line: String) {
    if JSON.load(Ordering::Relaxed) {
        tracing::info!(target: "conveyor", "{line}");
    } else {
        eprintln!("{line}");
    }
}

/// `eprintln!` for start-up and stop lines: goes through [`say_line`], so JSON logs stay JSON.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::logging::say_line(format!($($arg)*))
    };
}
pub(crate) use say;
