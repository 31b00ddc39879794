//! `[log]`: how the process writes its log lines (to stderr).
//!
//! `format = "text"` (the default) writes human-readable lines, coloured only on a terminal;
//! `format = "json"` writes one JSON object per line (tracing-subscriber's JSON formatter, the
//! event's fields at the top level: `timestamp`, `level`, `message`, `target`, and `topic`,
//! `partition`, `offset`, `message_id`, `group` where they apply), never coloured.
//!
//! Logging starts before the configuration is loaded (loading itself may log), so the binary
//! asks [`log_format`] first: `CONVEYOR_LOG_FORMAT`, then `[log] format` of the file (or
//! `CONVEYOR_LOG__FORMAT`). Which lines are written is chosen by `CONVEYOR_LOG` (an
//! `EnvFilter` directive such as `info` or `warn,conveyor_runtime=debug`).

use std::path::Path;

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use super::load::{format_figment, EnvList};
use super::ConfigError;

/// The environment variable that chooses the format, whatever the file says.
pub const LOG_FORMAT_ENV: &str = "CONVEYOR_LOG_FORMAT";

/// `[log]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`. Default: `text`.
    pub format: LogFormat,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal only).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(ConfigError::Invalid {
                key: LOG_FORMAT_ENV.into(),
                message: format!("`{other}` is not a log format: use `text` or `json`"),
            }),
        }
    }
}

/// The log format before the rest of the configuration is loaded: `CONVEYOR_LOG_FORMAT` in
/// `env`, else `[log] format` of the file at `path` (or `./conveyor.toml` when it exists) with
/// the `CONVEYOR_*` overrides; `text` when neither says. Only the `[log]` table is read here;
/// the rest is checked by [`super::Config::load`].
pub fn log_format(path: Option<&Path>, env: &[(String, String)]) -> Result<LogFormat, ConfigError> {
    if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == LOG_FORMAT_ENV) {
        return v.parse();
    }
    let mut fig = Figment::new();
    match path {
        Some(p) if p.exists() => fig = fig.merge(Toml::file(p)),
        None if Path::new("conveyor.toml").exists() => fig = fig.merge(Toml::file("conveyor.toml")),
        _ => {}
    }
    let fig = fig.merge(EnvList { vars: env.to_vec() });
    match fig.extract_inner::<LogSettings>("log") {
        Ok(log) => Ok(log.format),
        Err(e) if e.missing() => Ok(LogFormat::Text),
        Err(e) => Err(ConfigError::Parse(format_figment(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(log_format(Some(&p), &[]).unwrap(), LogFormat::Json);
        let text = env(&[("CONVEYOR_LOG_FORMAT", "text")]);
        assert_eq!(log_format(Some(&p), &text).unwrap(), LogFormat::Text);
        let nested = env(&[("CONVEYOR_LOG__FORMAT", "text")]);
        assert_eq!(log_format(Some(&p), &nested).unwrap(), LogFormat::Text);
        std::fs::write(&p, "data_dir = \"x\"\n").unwrap();
        assert_eq!(log_format(Some(&p), &[]).unwrap(), LogFormat::Text);
        let bad = env(&[("CONVEYOR_LOG_FORMAT", "xml")]);
        assert!(log_format(Some(&p), &bad)
            .unwrap_err()
            .to_string()
            .contains("`text` or `json`"));
        // the whole configuration accepts the table too
        std::fs::write(&p, "[log]\nformat = \"json\"\n").unwrap();
        let c = super::super::Config::load(Some(&p), &[]).unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        std::fs::write(&p, "[log]\nformat = \"xml\"\n").unwrap();
        let e = super::super::Config::load(Some(&p), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.format"), "{e}");
    }
}
