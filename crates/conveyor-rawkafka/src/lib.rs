//! Test support: writes Kafka records that no Rust or Java client can, to see how conveyor
//! treats records another producer wrote. rust-rdkafka and the Java client take header names
//! as `&str`/`String`, so neither can write a name that is not UTF-8; librdkafka's C API takes
//! bytes. This is the workspace's only `unsafe`, confined to that one call.

use std::ffi::CString;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;

/// Produces one record (`value`, no key) to `partition` of `topic` on `brokers` with one header
/// named `name` (any bytes but NUL) and flushes it.
pub fn produce_with_header_name(
    brokers: &str,
    topic: &str,
    partition: i32,
    name: &[u8],
    value: &[u8],
) -> Result<(), String> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let topic = CString::new(topic).map_err(|e| e.to_string())?;
    let name = CString::new(name).map_err(|e| e.to_string())?;
    let header_value = b"v";
    let vus = [
        rd::rd_kafka_vu_t {
            vtype: rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_TOPIC,
            u: rd::rd_kafka_vu_s__bindgen_ty_1 {
                cstr: topic.as_ptr(),
            },
        },
        rd::rd_kafka_vu_t {
            vtype: rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_PARTITION,
            u: rd::rd_kafka_vu_s__bindgen_ty_1 { i32_: partition },
        },
        rd::rd_kafka_vu_t {
            vtype: rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
            u: rd::rd_kafka_vu_s__bindgen_ty_1 {
                mem: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
                    ptr: value.as_ptr() as *mut _,
                    size: value.len(),
                },
            },
        },
        rd::rd_kafka_vu_t {
            vtype: rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
            u: rd::rd_kafka_vu_s__bindgen_ty_1 {
                i: rd::RD_KAFKA_MSG_F_COPY,
            },
        },
        rd::rd_kafka_vu_t {
            vtype: rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADER,
            u: rd::rd_kafka_vu_s__bindgen_ty_1 {
                header: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_2 {
                    name: name.as_ptr(),
                    val: header_value.as_ptr() as *const _,
                    size: header_value.len() as isize,
                },
            },
        },
    ];
    // SAFETY: `vus` and everything it points to outlive the call; with RD_KAFKA_MSG_F_COPY
    // librdkafka copies the value, and it copies the header, before returning.
    let err =
        unsafe { rd::rd_kafka_produceva(producer.client().native_ptr(), vus.as_ptr(), vus.len()) };
    if !err.is_null() {
        // SAFETY: a non-null error from produceva is ours to read and destroy
        let msg = unsafe {
            let m = std::ffi::CStr::from_ptr(rd::rd_kafka_error_string(err))
                .to_string_lossy()
                .into_owned();
            rd::rd_kafka_error_destroy(err);
            m
        };
        return Err(msg);
    }
    producer
        .flush(Duration::from_secs(10))
        .map_err(|e| e.to_string())
}
