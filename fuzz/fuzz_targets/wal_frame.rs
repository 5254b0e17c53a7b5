//! The local log's frames as the reader reads them back: raw bytes through the length and
//! checksum check and the decoder (even first byte), or any payload under a valid header and
//! checksum, so the decoder sees what only a checksum collision or a bug would give it (odd).
//! Frames the writer encodes must read back to the same record.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use dlog_wal::fuzzing::{encode_frame, read_frame};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Parts {
    topic: String,
    key: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    value: Vec<u8>,
    timestamp_ms: Option<i64>,
    offset: u64,
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let _ = read_frame(rest, 0);
        }
        1 => {
            // A valid header and checksum around any payload.
            let mut frame = Vec::with_capacity(rest.len() + 8);
            frame.extend_from_slice(&(rest.len() as u32).to_le_bytes());
            frame.extend_from_slice(&crc(rest).to_le_bytes());
            frame.extend_from_slice(rest);
            let _ = read_frame(&frame, u64::from(which));
        }
        _ => {
            let Ok(parts) = Parts::arbitrary(&mut Unstructured::new(rest)) else {
                return;
            };
            let headers: Vec<(&str, &[u8])> = parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect();
            let Ok(frame) = encode_frame(
                &parts.topic,
                parts.key.as_deref(),
                &headers,
                &parts.value,
                parts.timestamp_ms,
            ) else {
                return;
            };
            let offset = parts.offset;
            match read_frame(&frame, offset) {
                Ok(record) => {
                    assert_eq!(record.topic, parts.topic);
                    assert_eq!(record.key, parts.key);
                    assert_eq!(record.payload, parts.value);
                    assert_eq!(record.headers, parts.headers);
                    // i64::MIN is the format's "no timestamp".
                    if parts.timestamp_ms != Some(i64::MIN) {
                        assert_eq!(record.timestamp_ms, parts.timestamp_ms);
                    }
                }
                Err(e) => {
                    // Only an offset past i64 or a record shorter than the minimum frame may
                    // fail to read back.
                    assert!(
                        i64::try_from(offset).is_err() || e.contains("declares"),
                        "an encoded frame does not read back: {e}"
                    );
                }
            }
        }
    }
});

/// CRC-32 (IEEE), as the frame's checksum.
fn crc(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
