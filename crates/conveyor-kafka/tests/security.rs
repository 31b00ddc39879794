//! TLS and SASL settings reach librdkafka and are accepted by this build (TLS and SCRAM are
//! compiled in), and a misspelt setting is refused when the backend is created, not at the first
//! request. No TLS or SASL broker exists on this machine: the handshakes themselves rest on
//! librdkafka (README, "What is verified where").

use conveyor_core::Error;
use conveyor_kafka::{KafkaBackend, KafkaConfig};

fn connect(props: &[(&str, &str)]) -> Result<KafkaBackend, Error> {
    let mut c = KafkaConfig::new("127.0.0.1:1");
    for (k, v) in props {
        c = c.set(*k, *v);
    }
    KafkaBackend::connect(c)
}

#[test]
fn tls_and_sasl_configurations_are_accepted() {
    let cases: [&[(&str, &str)]; 5] = [
        &[("security.protocol", "SSL")],
        &[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "conveyor"),
            ("sasl.password", "secret"),
        ],
        &[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("sasl.username", "conveyor"),
            ("sasl.password", "secret"),
        ],
        &[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "conveyor"),
            ("sasl.password", "secret"),
        ],
        &[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "conveyor"),
            ("sasl.password", "secret"),
        ],
    ];
    for props in cases {
        if let Err(e) = connect(props) {
            panic!("{props:?} refused: {e}");
        }
    }
}

#[test]
fn misspelt_security_settings_are_refused_at_start() {
    for props in [
        &[("security.protocol", "SASL_TLS")][..],
        &[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-1024"),
        ][..],
        &[("sasl.pasword", "secret")][..],
    ] {
        let e = connect(props).expect_err("a bad setting must be refused");
        let (key, _) = props[props.len() - 1];
        assert!(
            e.to_string().contains(&format!("`{key}`")),
            "names the property: {e}"
        );
        assert!(
            !e.to_string().contains("secret"),
            "the value is not echoed: {e}"
        );
    }
}
