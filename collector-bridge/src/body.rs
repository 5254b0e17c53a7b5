//! Reading request bodies under the in-flight budget, for both receivers: bytes are reserved
//! as they arrive (never from what a sender declares), and gzip is inflated in steps whose
//! output is reserved before it is produced.

use std::io::{Cursor, Read};

use bytes::{Bytes, BytesMut};
use flate2::read::GzDecoder;

use crate::ingest::{IngestError, Ticket};

/// Above this many bytes, inflating runs on the blocking pool, so that one large request does
/// not stall the async workers serving every other connection.
pub(crate) const BLOCKING_THRESHOLD: usize = 64 * 1024;

/// The smallest step of inflated bytes reserved at a time.
const INFLATE_STEP: usize = 4096;

/// Collects the chunks of a body, holding a reservation on the request's ticket for every
/// byte it keeps (the joined buffer's whole capacity once chunks are joined).
#[derive(Default)]
pub(crate) struct Collected {
    /// The common single-chunk body, kept as it is, without a copy.
    single: Option<Bytes>,
    joined: Option<BytesMut>,
    len: usize,
}

impl Collected {
    /// Bytes collected so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The bytes collected so far.
    pub fn as_slice(&self) -> &[u8] {
        match (&self.single, &self.joined) {
            (_, Some(buf)) => buf,
            (Some(data), None) => data,
            (None, None) => &[],
        }
    }

    /// Adds a chunk, reserving first. `expected` (a declared length) only guides how much the
    /// joined buffer grows at once; it is never reserved ahead of the bytes.
    pub async fn push(
        &mut self,
        data: Bytes,
        expected: Option<usize>,
        ticket: &mut Ticket,
    ) -> Result<(), IngestError> {
        let len = self.len + data.len();
        match (&mut self.single, &mut self.joined) {
            (None, None) => {
                ticket.reserve(len).await?;
                self.single = Some(data);
            }
            (Some(first), None) => {
                let capacity = grown(0, len, expected);
                ticket.reserve(capacity).await?;
                let mut buf = BytesMut::with_capacity(capacity);
                buf.extend_from_slice(first);
                buf.extend_from_slice(&data);
                self.single = None;
                self.joined = Some(buf);
            }
            (_, Some(buf)) => {
                if buf.capacity() < len {
                    let capacity = grown(buf.capacity(), len, expected);
                    ticket.reserve(capacity).await?;
                    buf.reserve(capacity - buf.len());
                }
                buf.extend_from_slice(&data);
            }
        }
        self.len = len;
        Ok(())
    }

    /// The body.
    pub fn finish(self) -> Bytes {
        match (self.single, self.joined) {
            (_, Some(buf)) => buf.freeze(),
            (Some(data), None) => data,
            (None, None) => Bytes::new(),
        }
    }
}

/// The capacity to grow a buffer of `capacity` to for `needed` bytes: doubling, but not past
/// a declared length that covers what is needed.
fn grown(capacity: usize, needed: usize, expected: Option<usize>) -> usize {
    let doubled = capacity.saturating_mul(2).max(needed);
    match expected {
        Some(expected) if expected >= needed => doubled.min(expected),
        _ => doubled,
    }
}

/// Why a gzip body was not inflated.
#[derive(Debug)]
pub(crate) enum InflateError {
    /// The budget had no room for the inflated bytes in time.
    Busy(IngestError),
    /// It inflates to more than the limit.
    TooLarge,
    /// Not valid gzip.
    Invalid(String),
    /// The blocking task failed.
    Internal(String),
}

/// Inflates a gzip body, never beyond `limit` bytes, reserving the inflated size on `ticket`
/// before it is produced (guided by the gzip trailer's size, grown when that is wrong). Large
/// steps run on the blocking pool.
pub(crate) async fn inflate(
    body: Bytes,
    limit: usize,
    ticket: &mut Ticket,
) -> Result<Bytes, InflateError> {
    let compressed = body.len();
    let cap = limit.saturating_add(1);
    let mut upto = gzip_size_hint(&body)
        .saturating_add(1)
        .max(INFLATE_STEP)
        .min(cap);
    let mut decoder = GzDecoder::new(Cursor::new(body));
    let mut out = Vec::new();
    loop {
        ticket
            .reserve(compressed.saturating_add(upto))
            .await
            .map_err(InflateError::Busy)?;
        let done = if upto - out.len() > BLOCKING_THRESHOLD {
            let (d, o, done) = tokio::task::spawn_blocking(move || {
                let done = inflate_step(&mut decoder, &mut out, upto);
                (decoder, out, done)
            })
            .await
            .map_err(|e| InflateError::Internal(format!("inflating the body failed: {e}")))?;
            decoder = d;
            out = o;
            done
        } else {
            inflate_step(&mut decoder, &mut out, upto)
        };
        let done = done.map_err(|e| InflateError::Invalid(format!("invalid gzip body: {e}")))?;
        if out.len() > limit {
            return Err(InflateError::TooLarge);
        }
        if done {
            break;
        }
        upto = upto.saturating_mul(2).min(cap);
    }
    drop(decoder);
    ticket.release_to(out.len());
    Ok(Bytes::from(out))
}

/// Inflates until `out` holds `upto` bytes or the stream ends; true when it ended.
fn inflate_step(
    decoder: &mut GzDecoder<Cursor<Bytes>>,
    out: &mut Vec<u8>,
    upto: usize,
) -> std::io::Result<bool> {
    let want = upto.saturating_sub(out.len());
    out.reserve(want.min(INFLATE_STEP * 16));
    let read = decoder.by_ref().take(want as u64).read_to_end(out)?;
    Ok(read < want)
}

/// The inflated size a gzip member's trailer claims (ISIZE, modulo 2^32): a hint only.
fn gzip_size_hint(body: &[u8]) -> usize {
    match body.len().checked_sub(4).and_then(|at| body.get(at..)) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_doubles_but_stops_at_a_declared_length_that_covers_the_bytes() {
        assert_eq!(grown(0, 10, None), 10);
        assert_eq!(grown(10, 11, None), 20);
        assert_eq!(grown(10, 11, Some(15)), 15);
        // A declared length below what arrived is ignored.
        assert_eq!(grown(10, 30, Some(15)), 30);
        // A declared 16 MiB does not make two small chunks take 16 MiB.
        assert_eq!(grown(0, 8, Some(16 << 20)), 8);
    }
}
