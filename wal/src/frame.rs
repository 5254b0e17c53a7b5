//! One record on disk: `len: u32 LE | crc32: u32 LE | payload`, where the checksum covers the
//! payload and the payload is
//!
//! ```text
//! version: u8 (1) | timestamp_ms: i64 LE (i64::MIN = none) | topic_len: u16 | topic
//! | key_len: u32 (u32::MAX = no key) | key | header_count: u16
//! | (name_len: u16 | name | value_len: u32 | value)* | value (the rest)
//! ```
//!
//! A frame does not carry its offset: offsets follow from the segment's base offset and the
//! frame's position, so a frame can be encoded by the request that owns it, in parallel with
//! others, and the writer only concatenates.

use dlog_core::source::RawRecord;

/// Bytes before the payload: length and checksum.
pub(crate) const HEADER_BYTES: usize = 8;

/// The largest payload a frame may declare. Larger lengths are corruption (the bridge never
/// makes a record near this size), and refusing them keeps a torn length from making the
/// reader allocate gigabytes.
pub(crate) const MAX_PAYLOAD_BYTES: usize = 256 * 1024 * 1024;

/// The smallest payload a record can have: version, timestamp, topic length, key length and
/// header count. Shorter lengths are corruption; in particular a run of zero bytes (a tail
/// some filesystems leave after a crash) must not read as empty records with a valid
/// checksum.
pub(crate) const MIN_PAYLOAD_BYTES: usize = 1 + 8 + 2 + 4 + 2;
/// The smallest frame on disk.
pub(crate) const MIN_FRAME_BYTES: usize = HEADER_BYTES + MIN_PAYLOAD_BYTES;

const VERSION: u8 = 1;
const NO_TIMESTAMP: i64 = i64::MIN;
const NO_KEY: u32 = u32::MAX;

/// A frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A field is longer than the frame format can hold.
    #[error("{field} is {len} bytes, more than a local-log record can hold ({max})")]
    TooLarge {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The most the format holds.
        max: usize,
    },
}

fn fits<T: TryFrom<usize>>(field: &'static str, len: usize, max: usize) -> Result<T, FrameError> {
    T::try_from(len)
        .ok()
        .filter(|_| len <= max)
        .ok_or(FrameError::TooLarge { field, len, max })
}

/// Appends one frame holding these parts to `out`. On error `out` is left as it was.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    topic: &str,
    key: Option<&[u8]>,
    headers: &[(&str, &[u8])],
    value: &[u8],
    timestamp_ms: Option<i64>,
) -> Result<(), FrameError> {
    let topic_len: u16 = fits("topic", topic.len(), u16::MAX as usize)?;
    let key_len: u32 = match key {
        Some(k) => fits("key", k.len(), NO_KEY as usize - 1)?,
        None => NO_KEY,
    };
    let header_count: u16 = fits("header list", headers.len(), u16::MAX as usize)?;
    let mut payload_len = 1 + 8 + 2 + topic.len() + 4 + key.map_or(0, <[u8]>::len) + 2;
    for (name, value) in headers {
        fits::<u16>("header name", name.len(), u16::MAX as usize)?;
        fits::<u32>("header value", value.len(), u32::MAX as usize)?;
        payload_len += 2 + name.len() + 4 + value.len();
    }
    payload_len += value.len();
    let declared: u32 = fits("record", payload_len, MAX_PAYLOAD_BYTES)?;

    out.reserve(HEADER_BYTES + payload_len);
    out.extend_from_slice(&declared.to_le_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let payload_at = out.len();
    out.push(VERSION);
    out.extend_from_slice(&timestamp_ms.unwrap_or(NO_TIMESTAMP).to_le_bytes());
    out.extend_from_slice(&topic_len.to_le_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&key_len.to_le_bytes());
    if let Some(key) = key {
        out.extend_from_slice(key);
    }
    out.extend_from_slice(&header_count.to_le_bytes());
    for (name, value) in headers {
        // Lengths were checked above.
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out.extend_from_slice(value);
    let crc = crc32fast::hash(&out[payload_at..]);
    out[crc_at..payload_at].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// What is wrong with bytes read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Damage {
    /// Fewer bytes than the header or the declared payload: a write cut short.
    Torn,
    /// A declared length below [`MIN_PAYLOAD_BYTES`] or past [`MAX_PAYLOAD_BYTES`].
    BadLength(u32),
    /// The payload does not match its checksum.
    Checksum,
    /// The payload's layout is inconsistent (a checksum collision or a bug).
    Layout(&'static str),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Torn => f.write_str("record cut short"),
            Damage::BadLength(len) => write!(f, "record declares {len} bytes"),
            Damage::Checksum => f.write_str("checksum mismatch"),
            Damage::Layout(what) => write!(f, "malformed record: {what}"),
        }
    }
}

/// Reads the header at the start of `bytes`: the payload length.
pub(crate) fn payload_len(bytes: &[u8]) -> Result<usize, Damage> {
    let Some(header) = bytes.get(..HEADER_BYTES) else {
        return Err(Damage::Torn);
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if !(MIN_PAYLOAD_BYTES..=MAX_PAYLOAD_BYTES).contains(&(len as usize)) {
        return Err(Damage::BadLength(len));
    }
    Ok(len as usize)
}

/// Checks a whole frame (header and payload, exactly) and returns its payload.
pub(crate) fn check(frame: &[u8]) -> Result<&[u8], Damage> {
    let len = payload_len(frame)?;
    let Some(payload) = frame.get(HEADER_BYTES..HEADER_BYTES + len) else {
        return Err(Damage::Torn);
    };
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if crc32fast::hash(payload) != crc {
        return Err(Damage::Checksum);
    }
    Ok(payload)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Damage> {
        if self.0.len() < n {
            return Err(Damage::Layout(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u16(&mut self, what: &'static str) -> Result<usize, Damage> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Damage> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Decodes a checked payload into a record at `offset` (partition 0).
pub(crate) fn decode(payload: &[u8], offset: u64) -> Result<RawRecord, Damage> {
    let mut c = Cursor(payload);
    if c.take(1, "version")?[0] != VERSION {
        return Err(Damage::Layout("unknown version"));
    }
    let ts = c.take(8, "timestamp")?;
    let ts = i64::from_le_bytes([ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], ts[7]]);
    let topic_len = c.u16("topic length")?;
    let topic = std::str::from_utf8(c.take(topic_len, "topic")?)
        .map_err(|_| Damage::Layout("topic is not UTF-8"))?
        .to_string();
    let key = match c.u32("key length")? {
        NO_KEY => None,
        len => Some(c.take(len as usize, "key")?.to_vec()),
    };
    let count = c.u16("header count")?;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name_len = c.u16("header name length")?;
        let name = std::str::from_utf8(c.take(name_len, "header name")?)
            .map_err(|_| Damage::Layout("header name is not UTF-8"))?
            .to_string();
        let value_len = c.u32("header value length")? as usize;
        headers.push((name, c.take(value_len, "header value")?.to_vec()));
    }
    Ok(RawRecord {
        topic,
        partition: 0,
        offset: i64::try_from(offset).map_err(|_| Damage::Layout("offset past i64"))?,
        key,
        payload: c.0.to_vec(),
        headers,
        timestamp_ms: (ts != NO_TIMESTAMP).then_some(ts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &mut out,
            "trace_logs",
            Some(b"0af7651916cd43dd8448eb211c80319c"),
            &[("otlp.encoding", b"otlp_proto"), ("otlp.signal", b"traces")],
            value,
            Some(1_700_000_000_123),
        )
        .unwrap();
        out
    }

    #[test]
    fn a_frame_round_trips_every_field() {
        let bytes = frame(b"\x0a\x00payload");
        let record = decode(check(&bytes).unwrap(), 42).unwrap();
        assert_eq!(record.topic, "trace_logs");
        assert_eq!(record.offset, 42);
        assert_eq!(record.partition, 0);
        assert_eq!(
            record.key.as_deref(),
            Some(&b"0af7651916cd43dd8448eb211c80319c"[..])
        );
        assert_eq!(record.payload, b"\x0a\x00payload");
        assert_eq!(record.header("otlp.signal"), Some(&b"traces"[..]));
        assert_eq!(record.headers.len(), 2);
        assert_eq!(record.timestamp_ms, Some(1_700_000_000_123));

        let mut bare = Vec::new();
        encode(&mut bare, "t", None, &[], b"", None).unwrap();
        let record = decode(check(&bare).unwrap(), 0).unwrap();
        assert_eq!((record.key, record.timestamp_ms), (None, None));
        assert!(record.payload.is_empty() && record.headers.is_empty());
    }

    #[test]
    fn every_cut_and_every_flipped_bit_is_detected() {
        let bytes = frame(b"some value bytes");
        for cut in 0..bytes.len() {
            assert!(check(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[at] ^= 1 << bit;
                // A flipped length either tears the frame or leaves bytes over; both are
                // refused, as is any flipped payload or checksum bit.
                let accepted = check(&bad).is_ok_and(|p| p.len() + HEADER_BYTES == bad.len());
                assert!(!accepted, "flip of bit {bit} at byte {at} accepted");
            }
        }
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocating() {
        let mut bytes = frame(b"v");
        bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(payload_len(&bytes), Err(Damage::BadLength(u32::MAX)));
        // A payload whose inner lengths point past its end (checksum made to match).
        let mut payload = vec![VERSION];
        payload.extend_from_slice(&0i64.to_le_bytes());
        payload.extend_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            decode(&payload, 0).unwrap_err(),
            Damage::Layout("topic"),
            "a topic length past the payload must be refused"
        );
        payload.truncate(9);
        payload.extend_from_slice(&0u16.to_le_bytes());
        payload.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
        assert_eq!(decode(&payload, 0).unwrap_err(), Damage::Layout("key"));
    }

    #[test]
    fn regression_zero_tail_a_run_of_zero_bytes_is_no_record() {
        // Length 0 with the checksum of nothing (0) used to pass as an empty record.
        assert_eq!(payload_len(&[0; 8]), Err(Damage::BadLength(0)));
        assert!(check(&[0; 64]).is_err());
    }

    #[test]
    fn oversized_fields_are_refused_and_leave_the_buffer_unchanged() {
        let mut out = b"before".to_vec();
        let long_topic = "t".repeat(70_000);
        let err = encode(&mut out, &long_topic, None, &[], b"", None).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { field: "topic", .. }));
        assert_eq!(out, b"before");
    }
}
