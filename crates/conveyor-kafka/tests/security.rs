//! TLS and SASL settings reach librdkafka and are accepted by this build (TLS and SCRAM are
//! compiled in), and a misspelt setting is refused when the backend is created, not at the first
//! request. No TLS or SASL broker exists on this machine: the handshakes themselves rest on
//! librdkafka (docs/verification.md, "What is verified where").

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
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("security.protocol", "SASL_TLS")], "`security.protocol`"),
        (
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-1024"),
                ("sasl.username", "conveyor"),
                ("sasl.password", "secret"),
            ],
            "SCRAM-SHA-1024",
        ),
        (&[("sasl.pasword", "secret")], "`sasl.pasword`"),
    ];
    for (props, names) in cases {
        let e = connect(props)
            .expect_err("a bad setting must be refused")
            .to_string();
        assert!(e.contains(names), "the error names {names}: {e}");
        assert!(!e.contains("secret"), "the value is not echoed: {e}");
    }
}
