//! [`ErrorWatch`]: the producer's client context. librdkafka reports connection failures (a
//! refused TLS handshake, a failed SASL login, every broker down) only through its error
//! callback; requests merely time out. The watch keeps the last such report so
//! [`crate::KafkaBackend::ping`] can say why the cluster cannot be used.

use std::sync::{Arc, Mutex};

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

/// Keeps librdkafka's last global error, and whether it means the cluster refused us. Clones
/// share it (the producer owns one, the backend reads another).
#[derive(Debug, Default, Clone)]
pub(crate) struct ErrorWatch {
    last: Arc<Mutex<Option<(bool, String)>>>,
}

impl ErrorWatch {
    /// The last authentication or TLS failure, if the last error was one.
    pub(crate) fn refused(&self) -> Option<String> {
        match &*self.last.lock().expect("error watch") {
            Some((true, reason)) => Some(reason.clone()),
            _ => None,
        }
    }

    /// The last error of any kind.
    pub(crate) fn last(&self) -> Option<String> {
        self.last
            .lock()
            .expect("error watch")
            .as_ref()
            .map(|(_, r)| r.clone())
    }
}

impl ClientContext for ErrorWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        let refused = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Authentication)
                | Some(RDKafkaErrorCode::SaslAuthenticationFailed)
                | Some(RDKafkaErrorCode::SSL)
                | Some(RDKafkaErrorCode::TopicAuthorizationFailed)
                | Some(RDKafkaErrorCode::ClusterAuthorizationFailed)
        );
        tracing::warn!(error = %error, reason, "kafka client error");
        *self.last.lock().expect("error watch") = Some((refused, reason.to_owned()));
    }
}
