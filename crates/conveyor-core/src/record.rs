//! Records: the unit every backend stores and delivers.
//!
//! A [`Record`] is what a producer publishes: an optional key, a value and headers, as in Kafka.
//! A [`ConsumedRecord`] is what a consumer receives: the same fields plus the topic, partition,
//! offset and the timestamp the record was stored with.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Ordered record headers. Names may repeat, as in Kafka; [`Headers::get`] returns the last value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Bytes)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// Appends a header, keeping any earlier one of the same name.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        self.0.push((name.into(), value.into()));
    }

    /// Sets a header, replacing every earlier one of the same name.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        let name = name.into();
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, value.into()));
    }

    /// Removes every header of this name.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }

    /// The last value of a header.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The last value of a header as UTF-8, or `None` when missing or not UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Iterates over the headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total bytes of names and values.
    pub fn byte_len(&self) -> usize {
        self.0.iter().map(|(n, v)| n.len() + v.len()).sum()
    }
}

impl<N: Into<String>, V: Into<Bytes>> FromIterator<(N, V)> for Headers {
    fn from_iter<T: IntoIterator<Item = (N, V)>>(iter: T) -> Self {
        Headers(
            iter.into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }
}

/// A record to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The key: chooses the partition (murmur2, as Kafka's Java client) and so the order.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Headers (job metadata lives here, see [`crate::headers`]).
    pub headers: Headers,
    /// An explicit partition, overriding the key's hash.
    pub partition: Option<i32>,
    /// Milliseconds since the epoch; the backend sets the current time when `None`.
    pub timestamp: Option<i64>,
}

impl Record {
    /// A record with this value and nothing else.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Record {
            value: value.into(),
            ..Record::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets an explicit partition.
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Approximate stored size: key, value and headers.
    pub fn byte_len(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.len()) + self.value.len() + self.headers.byte_len()
    }
}

/// A record as delivered to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// The topic it was read from.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// The key.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// The headers, byte for byte as published.
    pub headers: Headers,
}

impl ConsumedRecord {
    /// The topic and partition the record was read from.
    pub fn tp(&self) -> crate::TopicPartition {
        crate::TopicPartition::new(self.topic.clone(), self.partition)
    }

    /// The record's value, key and headers as a new [`Record`] (for republishing, e.g. to a DLQ).
    pub fn to_record(&self) -> Record {
        Record {
            key: self.key.clone(),
            value: self.value.clone(),
            headers: self.headers.clone(),
            partition: None,
            timestamp: None,
        }
    }
}

/// Where a published record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The partition.
    pub partition: i32,
    /// The offset in that partition.
    pub offset: i64,
}
