//! The on-disk encoding of one record and of the log keys.
//!
//! Log key: partition (u32, big-endian) then offset (u64, big-endian), so a partition is one
//! contiguous, ordered key range. Value:
//!
//! ```text
//! u8 version (1) | i64 timestamp | u32 key length (u32::MAX = no key) | key
//! | u32 header count | per header: u16 name length, name, u32 value length, value
//! | the record value (the rest)
//! ```
//! All integers are big-endian. The timestamp comes first so retention reads 9 bytes per record.

use bytes::{BufMut, Bytes, BytesMut};
use conveyor_core::{ConsumedRecord, Error, Headers, Result};

const VERSION: u8 = 1;
const NO_KEY: u32 = u32::MAX;

/// The key of `offset` in `partition`.
pub(crate) fn log_key(partition: i32, offset: i64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&(partition as u32).to_be_bytes());
    k[4..].copy_from_slice(&(offset as u64).to_be_bytes());
    k
}

/// Splits a log key into partition and offset.
pub(crate) fn parse_log_key(k: &[u8]) -> Result<(i32, i64)> {
    if k.len() != 12 {
        return Err(Error::Corrupt(format!("log key of {} bytes", k.len())));
    }
    let p = u32::from_be_bytes(k[..4].try_into().expect("4 bytes")) as i32;
    let o = u64::from_be_bytes(k[4..].try_into().expect("8 bytes")) as i64;
    Ok((p, o))
}

/// Encodes a record for storage.
pub(crate) fn encode(
    timestamp: i64,
    key: Option<&Bytes>,
    headers: &Headers,
    value: &[u8],
) -> Bytes {
    let mut b = BytesMut::with_capacity(
        1 + 8
            + 4
            + key.map_or(0, |k| k.len())
            + 4
            + headers.len() * 6
            + headers.byte_len()
            + value.len(),
    );
    b.put_u8(VERSION);
    b.put_i64(timestamp);
    match key {
        Some(k) => {
            b.put_u32(k.len() as u32);
            b.put_slice(k);
        }
        None => b.put_u32(NO_KEY),
    }
    b.put_u32(headers.len() as u32);
    for (name, v) in headers.iter() {
        b.put_u16(name.len() as u16);
        b.put_slice(name.as_bytes());
        b.put_u32(v.len() as u32);
        b.put_slice(v);
    }
    b.put_slice(value);
    b.freeze()
}

/// The timestamp of an encoded record, without decoding the rest.
pub(crate) fn timestamp_of(v: &[u8]) -> Result<i64> {
    if v.len() < 9 || v[0] != VERSION {
        return Err(Error::Corrupt("record header".into()));
    }
    Ok(i64::from_be_bytes(v[1..9].try_into().expect("8 bytes")))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>> {
        if self.buf.len() - self.pos < n {
            return Err(Error::Corrupt("record truncated".into()));
        }
        let r = self.pos..self.pos + n;
        self.pos += n;
        Ok(r)
    }
    fn u16(&mut self) -> Result<usize> {
        let r = self.take(2)?;
        Ok(u16::from_be_bytes(self.buf[r].try_into().expect("2 bytes")) as usize)
    }
    fn u32(&mut self) -> Result<u32> {
        let r = self.take(4)?;
        Ok(u32::from_be_bytes(self.buf[r].try_into().expect("4 bytes")))
    }
}

/// Decodes a stored record. `raw` is shared, so key, value and headers are zero-copy slices.
pub(crate) fn decode(
    topic: &str,
    partition: i32,
    offset: i64,
    raw: Bytes,
) -> Result<ConsumedRecord> {
    let timestamp = timestamp_of(&raw)?;
    let mut r = Reader { buf: &raw, pos: 9 };
    let key = match r.u32()? {
        NO_KEY => None,
        n => Some(raw.slice(r.take(n as usize)?)),
    };
    let count = r.u32()? as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = r.u16()?;
        let name = std::str::from_utf8(&raw[r.take(n)?])
            .map_err(|_| Error::Corrupt("header name is not UTF-8".into()))?
            .to_owned();
        let n = r.u32()? as usize;
        headers.push((name, raw.slice(r.take(n)?)));
    }
    let value = raw.slice(r.pos..);
    Ok(ConsumedRecord {
        topic: topic.to_owned(),
        partition,
        offset,
        timestamp,
        key,
        value,
        headers: headers.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_byte() {
        let headers: Headers = [("a", Bytes::from_static(b"\x00\xff")), ("a", Bytes::new())]
            .into_iter()
            .collect();
        let value = Bytes::from_static(b"\x00binary\xff\xfe");
        for key in [None, Some(Bytes::new()), Some(Bytes::from_static(b"k\x00"))] {
            let raw = encode(42, key.as_ref(), &headers, &value);
            let r = decode("t", 3, 7, raw).unwrap();
            assert_eq!((r.partition, r.offset, r.timestamp), (3, 7, 42));
            assert_eq!(r.key, key);
            assert_eq!(r.headers, headers);
            assert_eq!(r.value, value);
        }
    }

    #[test]
    fn truncated_records_are_reported_not_panicked() {
        let raw = encode(1, Some(&Bytes::from_static(b"key")), &Headers::new(), b"v");
        for n in 0..raw.len() - 1 {
            let _ = decode("t", 0, 0, raw.slice(..n)); // must not panic
        }
        assert!(decode("t", 0, 0, raw.slice(..5)).is_err());
    }

    #[test]
    fn log_keys_sort_by_partition_then_offset() {
        assert!(log_key(0, 5) < log_key(0, 6));
        assert!(log_key(0, 300) < log_key(1, 0));
        assert_eq!(parse_log_key(&log_key(9, 1 << 40)).unwrap(), (9, 1 << 40));
    }
}
