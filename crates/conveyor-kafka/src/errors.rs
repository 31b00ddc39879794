//! [`ErrorWatch`]: the producer's client context. librdkafka reports connection failures (a
//! refused TLS handshake, a failed SASL login, every broker down) only through its error
//! callback; requests merely time out. The watch keeps the last such report so
//! [`crate::KafkaBackend::ping`] can say why the cluster cannot be used.

use std::sync::{Arc, Mutex};

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

/// Keeps librdkafka's last global error and its last refusal (a failed TLS handshake or SASL
/// login: librdkafka follows each with "all brokers down", which must not hide it). Clones
/// share it (the producer owns one, the backend reads another).
#[derive(Debug, Default, Clone)]
pub(crate) struct ErrorWatch {
    state: Arc<Mutex<Seen>>,
}

#[derive(Debug, Default)]
struct Seen {
    last: Option<String>,
    refused: Option<String>,
}

impl ErrorWatch {
    /// Takes the authentication, authorization or TLS failure seen since the last call.
    pub(crate) fn take_refused(&self) -> Option<String> {
        self.state.lock().expect("error watch").refused.take()
    }

    /// The last error of any kind.
    pub(crate) fn last(&self) -> Option<String> {
        self.state.lock().expect("error watch").last.clone()
    }
}

impl ClientContext for ErrorWatch {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::metrics::record(&statistics, "producer", "");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // a broker refusing a client certificate answers with a TLS alert after the handshake,
        // which librdkafka reports as a transport failure
        let tls_alert = error.rdkafka_error_code()
            == Some(RDKafkaErrorCode::BrokerTransportFailure)
            && reason.contains("SSL routines");
        let refused = tls_alert
            || matches!(
                error.rdkafka_error_code(),
                Some(RDKafkaErrorCode::Authentication)
                    | Some(RDKafkaErrorCode::SaslAuthenticationFailed)
                    | Some(RDKafkaErrorCode::SSL)
                    | Some(RDKafkaErrorCode::TopicAuthorizationFailed)
                    | Some(RDKafkaErrorCode::ClusterAuthorizationFailed)
            );
        tracing::warn!(error = %error, reason, "kafka client error");
        let mut seen = self.state.lock().expect("error watch");
        seen.last = Some(reason.to_owned());
        if refused {
            seen.refused = Some(reason.to_owned());
        }
    }
}
