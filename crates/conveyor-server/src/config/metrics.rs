//! `[metrics]`: where Prometheus metrics are served besides the API's `/metrics`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[metrics]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// An address of its own serving `GET /metrics` only (e.g. `127.0.0.1:9464`, the port
    /// OpenTelemetry's Prometheus exporter uses), for a scraper kept off the API port. Default:
    /// none (`/metrics` is on the API port only).
    pub listen: Option<String>,
}

impl MetricsSettings {
    /// `Err((key, message))` when `listen` is not an address.
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        match &self.listen {
            Some(l) if l.parse::<SocketAddr>().is_err() => Err((
                "metrics.listen".into(),
                format!("`{l}` is not an address like 127.0.0.1:9464"),
            )),
            _ => Ok(()),
        }
    }
}
