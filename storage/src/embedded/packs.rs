//! Log packs: the logs of a closed day, moved out of their rows into deflated blocks of a
//! few hundred records each, with a trigram index over each block's text and an index of the
//! trace and span ids in each block.
//!
//! A log row costs about 330 bytes with its indexes: the row with its 16-byte identity, a
//! trigram index entry per distinct trigram of its body, and three B-tree indexes (time, span,
//! trace). In a pack the records' texts and attributes compress together, a trigram is
//! indexed once per pack, the time index is the pack's range, and an id is listed once per
//! pack it appears in. Packs are read whole: a search decodes the packs its indexes point to
//! and checks every record against the query, as the rows' SQL would have.

use rusqlite::types::Value as Sql;

use super::codec::{self, Corrupt, Dec, Enc};

/// Records per pack at most.
pub const PACK_LOGS: usize = 512;
/// A pack closes once its records' encoding passes this many bytes.
pub const PACK_BYTES: usize = 64 * 1024;
/// Deflate level of a pack: packs are written once and read many times.
const LEVEL: u32 = 6;

/// One log record as a pack holds it: the columns of its row.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedLog {
    pub time: i64,
    pub resource: i64,
    pub level: i64,
    pub severity: i64,
    pub trace_id: Option<Sql>,
    pub body: String,
    pub rest: Vec<u8>,
    /// The identity as the row kept it (16 bytes, or the text of an id that is not hex).
    pub doc_key: Vec<u8>,
}

fn put_opt_id(e: &mut Enc, v: &Option<Sql>) {
    match v {
        Some(Sql::Blob(b)) => {
            e.buf.push(1);
            e.bytes(b);
        }
        Some(Sql::Text(t)) => {
            e.buf.push(2);
            e.str(t);
        }
        _ => e.buf.push(0),
    }
}

fn get_opt_id(d: &mut Dec<'_>) -> Result<Option<Sql>, Corrupt> {
    let tag = d.peek().ok_or(Corrupt("truncated id"))?;
    d.skip(1);
    match tag {
        0 => Ok(None),
        1 => Ok(Some(Sql::Blob(d.bytes()?.to_vec()))),
        2 => Ok(Some(Sql::Text(d.str()?))),
        _ => Err(Corrupt("unknown id type")),
    }
}

/// The stored form of a pack: its records (in time order) encoded, then deflated.
pub fn encode<'a, I>(logs: I) -> Vec<u8>
where
    I: IntoIterator<Item = &'a PackedLog>,
    I::IntoIter: ExactSizeIterator,
{
    let logs = logs.into_iter();
    let mut e = Enc::default();
    e.u64(logs.len() as u64);
    let mut prev = 0i64;
    for l in logs {
        e.i64(l.time.wrapping_sub(prev));
        prev = l.time;
        e.i64(l.resource);
        e.i64(l.level);
        e.i64(l.severity);
        put_opt_id(&mut e, &l.trace_id);
        e.str(&l.body);
        e.bytes(&l.rest);
        e.bytes(&l.doc_key);
    }
    use std::io::Write;
    let mut z = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(e.buf.len() / 3 + 16),
        flate2::Compression::new(LEVEL),
    );
    z.get_mut().push(codec::DEFLATE);
    // Writing into a Vec cannot fail.
    let _ = z.write_all(&e.buf);
    z.finish().unwrap_or_default()
}

/// The records of a stored pack. Anything that does not decode is corrupt; a count claiming
/// more records than the bytes can hold is refused before anything is allocated for it.
pub fn decode(data: &[u8]) -> Result<Vec<PackedLog>, Corrupt> {
    let raw = codec::open_body(data)?;
    let mut d = Dec::new(&raw);
    let n = d.u64()? as usize;
    // Each record takes at least 8 bytes (four varints, an id tag, three lengths).
    if n > d.remaining() / 8 + 1 {
        return Err(Corrupt("record count past the end"));
    }
    let mut out = Vec::with_capacity(n);
    let mut prev = 0i64;
    for _ in 0..n {
        let time = prev.wrapping_add(d.i64()?);
        prev = time;
        out.push(PackedLog {
            time,
            resource: d.i64()?,
            level: d.i64()?,
            severity: d.i64()?,
            trace_id: get_opt_id(&mut d)?,
            body: d.str()?,
            rest: d.bytes()?.to_vec(),
            doc_key: d.bytes()?.to_vec(),
        });
    }
    if d.remaining() != 0 {
        return Err(Corrupt("bytes after the last record"));
    }
    Ok(out)
}

/// The key under which a pack lists a trace id (`kind` b't') or a span id (b's'), given as
/// stored (the bytes of a hex id, or its text): 32 bits of a hash, which SQLite stores in 4
/// bytes. A collision (about one in 4 billion per id) only makes a search read a pack it did
/// not need.
pub fn id_key(kind: u8, id: &Sql) -> Option<i64> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&[kind]);
    match id {
        Sql::Blob(b) => {
            h.update(&[0]);
            h.update(b);
        }
        Sql::Text(t) => {
            h.update(&[1]);
            h.update(t.as_bytes());
        }
        _ => return None,
    }
    Some(i64::from(h.digest() as i32))
}

/// SQLite's `body LIKE ('%' || needle || '%')` (the needle's wildcards escaped), as the rows'
/// search runs it: a substring, ASCII letters compared without case. SQLite reads both texts
/// up to their first NUL: a body ends there, and a needle holding one leaves the pattern
/// `'%' || (needle up to it)`, which a body matches by ending with it.
pub fn like_contains(body: &str, needle: &str) -> bool {
    let b = body.split('\0').next().unwrap_or_default().as_bytes();
    match needle.find('\0') {
        None => {
            let n = needle.as_bytes();
            n.is_empty()
                || (n.len() <= b.len() && b.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n)))
        }
        Some(i) => {
            let n = &needle.as_bytes()[..i];
            n.len() <= b.len() && b[b.len() - n.len()..].eq_ignore_ascii_case(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: i64) -> PackedLog {
        PackedLog {
            time: 1_700_000_000_000_000_000 + i * 1_000_003,
            resource: i % 7,
            level: 3,
            severity: (i % 24) - 3,
            trace_id: match i % 3 {
                0 => None,
                1 => Some(Sql::Blob(vec![i as u8; 16])),
                _ => Some(Sql::Text(format!("not-hex-{i}"))),
            },
            body: format!("request {i} served — ünïcode"),
            rest: vec![0, 1, 2, i as u8],
            doc_key: vec![0xab; 16],
        }
    }

    #[test]
    fn packs_decode_to_their_records() {
        for n in [0usize, 1, 2, 500] {
            let logs: Vec<PackedLog> = (0..n as i64).map(sample).collect();
            let data = encode(&logs);
            assert_eq!(decode(&data).unwrap(), logs);
        }
        // Times out of order and at the ends of the range.
        let mut logs: Vec<PackedLog> = (0..4).map(sample).collect();
        logs[0].time = i64::MAX;
        logs[1].time = i64::MIN;
        logs[2].time = 0;
        assert_eq!(decode(&encode(&logs)).unwrap(), logs);
    }

    #[test]
    fn damaged_packs_are_errors_not_panics() {
        let logs: Vec<PackedLog> = (0..50).map(sample).collect();
        let data = encode(&logs);
        // Every prefix of the stored bytes, and of the raw encoding.
        for cut in 0..data.len() {
            let _ = decode(&data[..cut]);
        }
        let raw = codec::open_body(&data).unwrap().into_owned();
        for cut in 0..raw.len() {
            let mut framed = vec![codec::RAW];
            framed.extend_from_slice(&raw[..cut]);
            assert!(decode(&framed).is_err(), "cut at {cut}");
        }
        // A count far past what the bytes hold is refused before allocating.
        let mut e = Enc::default();
        e.u64(u64::MAX / 2);
        let mut framed = vec![codec::RAW];
        framed.extend_from_slice(&e.buf);
        assert!(decode(&framed).is_err());
        // Flipped bytes.
        let mut framed = vec![codec::RAW];
        framed.extend_from_slice(&raw);
        for i in 1..framed.len() {
            let mut bad = framed.clone();
            bad[i] ^= 0xff;
            let _ = decode(&bad);
        }
        // Trailing bytes.
        framed.push(0);
        assert!(decode(&framed).is_err());
    }

    #[test]
    fn like_contains_is_sqlite_like_on_a_substring() {
        assert!(like_contains("Payment SETTLED at 5", "settled at"));
        assert!(like_contains("abc", ""));
        assert!(!like_contains("ab", "abc"));
        // Only ASCII letters fold, as in SQLite's LIKE.
        assert!(!like_contains("ÜBER", "über"));
        assert!(like_contains("grüße", "GRüßE"));
        // Wildcards are plain characters.
        assert!(!like_contains("50 off", "50%"));
        assert!(like_contains("50% off", "50%"));
    }

    /// The check of a packed record agrees with SQLite's own `LIKE`, as the rows' search
    /// runs it, on texts of letters in both cases, wildcards, the escape character, NUL and
    /// non-ASCII letters.
    #[test]
    fn like_contains_agrees_with_sqlite_like() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let mut stmt = conn
            .prepare("SELECT ?1 LIKE ('%' || ?2 || '%') ESCAPE '\\'")
            .unwrap();
        let alphabet = ['a', 'A', 'b', 'B', '%', '_', '\\', '\0', 'ü', 'Ü', ' '];
        // A small deterministic generator: every text of up to 3 characters as the needle,
        // bodies of up to 6 drawn from a fixed sequence.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut needles = vec![String::new()];
        for len in 1..=3 {
            let mut idx = vec![0usize; len];
            loop {
                needles.push(idx.iter().map(|i| alphabet[*i]).collect());
                let mut k = 0;
                while k < len {
                    idx[k] += 1;
                    if idx[k] < alphabet.len() {
                        break;
                    }
                    idx[k] = 0;
                    k += 1;
                }
                if k == len {
                    break;
                }
            }
        }
        let mut checked = 0;
        let mut agree = |body: &str, needle: &str| {
            let sqlite: bool = stmt
                .query_row(
                    rusqlite::params![body, super::super::like_escape(needle)],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(like_contains(body, needle), sqlite, "{body:?} {needle:?}");
            checked += 1;
        };
        for needle in &needles {
            for _ in 0..4 {
                let len = (next() % 7) as usize;
                let body: String = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                agree(&body, needle);
            }
            // And the needle inside a body, at its end, and after a NUL.
            for body in [
                format!("x{needle}y"),
                format!("xx{needle}"),
                format!("a\0{needle}"),
            ] {
                agree(&body, needle);
            }
        }
        assert!(checked > 5000);
    }

    #[test]
    fn id_keys_tell_kinds_and_forms_apart() {
        let blob = Sql::Blob(vec![1, 2]);
        let text = Sql::Text("0102".into());
        assert_ne!(id_key(b't', &blob), id_key(b's', &blob));
        assert_ne!(id_key(b't', &blob), id_key(b't', &text));
        assert_eq!(id_key(b't', &blob), id_key(b't', &Sql::Blob(vec![1, 2])));
        assert_eq!(id_key(b't', &Sql::Null), None);
    }
}
