//! The compact binary encoding of span and log bodies: varints, dictionary-coded attribute
//! keys and typed values, deflate-compressed when a body is large enough to gain from it.
//!
//! A body starts with one format byte: [`RAW`] or [`DEFLATE`] (the rest is a raw deflate
//! stream of the encoding). Anything that does not decode is reported as corrupt, never guessed at.

use serde_json::Value;

/// The body that follows is the raw encoding.
pub const RAW: u8 = 0;
/// The body that follows is a deflate stream of the raw encoding.
pub const DEFLATE: u8 = 1;
/// Value tag of a dictionary string (written and read by the store, which owns the
/// dictionary).
pub const DICT: u8 = 8;
/// Bodies at least this long are tried compressed.
const COMPRESS_FROM: usize = 160;
/// Deflate level: fast, most of the gain on short texts.
const LEVEL: u32 = 3;
/// No decoded body may exceed this (a corrupt or hostile frame cannot claim gigabytes).
const MAX_DECODED: usize = 64 * 1024 * 1024;

/// Appends the encoding of values to a buffer.
#[derive(Default)]
pub struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    pub fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u64(0),
            Some(s) => {
                self.u64(s.len() as u64 + 1);
                self.buf.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// A JSON attribute value, typed: null, bools, integers, floats and strings natively,
    /// arrays and maps as JSON text.
    pub fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.buf.push(0),
            Value::Bool(false) => self.buf.push(1),
            Value::Bool(true) => self.buf.push(2),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    self.buf.push(3);
                    self.i64(i);
                } else if let Some(u) = n.as_u64() {
                    self.buf.push(4);
                    self.u64(u);
                } else {
                    self.buf.push(5);
                    self.buf
                        .extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
                }
            }
            Value::String(s) => {
                self.buf.push(6);
                self.str(s);
            }
            other => {
                self.buf.push(7);
                self.str(&other.to_string());
            }
        }
    }

    /// The finished body: raw, or compressed when that is smaller.
    pub fn finish(self) -> Vec<u8> {
        if self.buf.len() >= COMPRESS_FROM {
            use std::io::Write;
            let mut z = flate2::write::DeflateEncoder::new(
                Vec::with_capacity(self.buf.len() / 2 + 1),
                flate2::Compression::new(LEVEL),
            );
            z.get_mut().push(DEFLATE);
            if z.write_all(&self.buf).is_ok() {
                if let Ok(out) = z.finish() {
                    if out.len() < self.buf.len() + 1 {
                        return out;
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(self.buf.len() + 1);
        out.push(RAW);
        out.extend_from_slice(&self.buf);
        out
    }
}

/// Reads values back in the order [`Enc`] wrote them.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// A body did not decode.
#[derive(Debug)]
pub struct Corrupt(pub &'static str);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "undecodable body: {}", self.0)
    }
}

/// The raw encoding of a stored body (decompressed when needed).
pub fn open_body(body: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, Corrupt> {
    match body.split_first() {
        Some((&RAW, rest)) => Ok(std::borrow::Cow::Borrowed(rest)),
        Some((&DEFLATE, rest)) => {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::DeflateDecoder::new(rest)
                .take(MAX_DECODED as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|_| Corrupt("bad deflate stream"))?;
            if out.len() > MAX_DECODED {
                return Err(Corrupt("body too large"));
            }
            Ok(std::borrow::Cow::Owned(out))
        }
        _ => Err(Corrupt("unknown body format")),
    }
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }

    /// The next byte, not consumed.
    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Skips bytes (at most to the end).
    pub fn skip(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn u64(&mut self) -> Result<u64, Corrupt> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or(Corrupt("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(Corrupt("varint too long"))
    }

    pub fn i64(&mut self) -> Result<i64, Corrupt> {
        let u = self.u64()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    pub fn len(&mut self) -> Result<usize, Corrupt> {
        let n = self.u64()? as usize;
        if n > self.buf.len() - self.pos {
            return Err(Corrupt("length past the end"));
        }
        Ok(n)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], Corrupt> {
        let n = self.len()?;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn str(&mut self) -> Result<String, Corrupt> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| Corrupt("text is not UTF-8"))
    }

    pub fn opt_str(&mut self) -> Result<Option<String>, Corrupt> {
        let n = self.u64()? as usize;
        if n == 0 {
            return Ok(None);
        }
        let n = n - 1;
        if n > self.buf.len() - self.pos {
            return Err(Corrupt("length past the end"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        String::from_utf8(s.to_vec())
            .map(Some)
            .map_err(|_| Corrupt("text is not UTF-8"))
    }

    pub fn value(&mut self) -> Result<Value, Corrupt> {
        let tag = *self.buf.get(self.pos).ok_or(Corrupt("truncated value"))?;
        self.pos += 1;
        Ok(match tag {
            0 => Value::Null,
            1 => Value::Bool(false),
            2 => Value::Bool(true),
            3 => Value::from(self.i64()?),
            4 => Value::from(self.u64()?),
            5 => {
                let raw = self
                    .buf
                    .get(self.pos..self.pos + 8)
                    .ok_or(Corrupt("truncated float"))?;
                self.pos += 8;
                let f = f64::from_le_bytes(raw.try_into().map_err(|_| Corrupt("float"))?);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
            6 => Value::String(self.str()?),
            7 => serde_json::from_str(&self.str()?).map_err(|_| Corrupt("bad JSON value"))?,
            _ => return Err(Corrupt("unknown value type")),
        })
    }
}

/// An id as stored: the bytes of a lowercase hex id, or its text when it is not one (a
/// sender may send anything). A BLOB never equals a TEXT in SQLite, so the two cannot clash.
pub fn id_value(id: &str) -> rusqlite::types::Value {
    if !id.is_empty()
        && id.len().is_multiple_of(2)
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        if let Ok(bytes) = hex::decode(id) {
            return rusqlite::types::Value::Blob(bytes);
        }
    }
    rusqlite::types::Value::Text(id.to_string())
}

/// The id an [`id_value`] was made from.
pub fn id_text(v: rusqlite::types::ValueRef<'_>) -> Option<String> {
    match v {
        rusqlite::types::ValueRef::Blob(b) => Some(hex::encode(b)),
        rusqlite::types::ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        _ => None,
    }
}

/// Ids inside an encoded body: a tag (0 bytes, 1 text), then the bytes.
pub fn put_id(e: &mut Enc, id: &str) {
    match id_value(id) {
        rusqlite::types::Value::Blob(b) => {
            e.buf.push(0);
            e.bytes(&b);
        }
        _ => {
            e.buf.push(1);
            e.str(id);
        }
    }
}

pub fn get_id(d: &mut Dec<'_>) -> Result<String, Corrupt> {
    let tag = *d.buf.get(d.pos).ok_or(Corrupt("truncated id"))?;
    d.pos += 1;
    match tag {
        0 => Ok(hex::encode(d.bytes()?)),
        1 => d.str(),
        _ => Err(Corrupt("unknown id type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_and_ids_round_trip_raw_and_compressed() {
        for repeat in [1usize, 40] {
            let values = vec![
                json!(null),
                json!(true),
                json!(false),
                json!(-7),
                json!(u64::MAX),
                json!(0.25),
                json!("GET"),
                json!(["a", {"b": 1}]),
            ];
            let mut e = Enc::default();
            for _ in 0..repeat {
                for v in &values {
                    e.value(v);
                }
                put_id(&mut e, "0af7651916cd43dd");
                put_id(&mut e, "not-hex");
                e.opt_str(None);
                e.opt_str(Some("x"));
            }
            let body = e.finish();
            assert_eq!(body[0], if repeat == 1 { RAW } else { DEFLATE });
            let raw = open_body(&body).unwrap();
            let mut d = Dec::new(&raw);
            for _ in 0..repeat {
                for v in &values {
                    assert_eq!(&d.value().unwrap(), v);
                }
                assert_eq!(get_id(&mut d).unwrap(), "0af7651916cd43dd");
                assert_eq!(get_id(&mut d).unwrap(), "not-hex");
                assert_eq!(d.opt_str().unwrap(), None);
                assert_eq!(d.opt_str().unwrap().as_deref(), Some("x"));
            }
        }
    }

    #[test]
    fn garbage_is_reported_not_guessed() {
        assert!(open_body(&[9, 1, 2]).is_err());
        assert!(open_body(&[DEFLATE, 0xff, 0xff, 0xff]).is_err());
        let mut d = Dec::new(&[0xff, 0xff]);
        assert!(d.u64().is_err());
        let mut d = Dec::new(&[6, 200]);
        assert!(d.value().is_err());
    }
}
