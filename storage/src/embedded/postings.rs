//! The attribute index of a day partition as posting lists: per (key, value), the numbers of
//! the traces holding it, in chunks of delta-coded varints.
//!
//! One row per trace and value (the layout before 5) cost about 14 bytes with SQLite's
//! record and cell overhead; a list costs about one byte per trace for the values shared by
//! many traces (a method, a status code, a service), and appending a batch's traces to a
//! list touches its last chunk instead of one B-tree page per trace.
//!
//! Entries are appended in the order traces are written: a new trace's number is higher than
//! every number before it, a late span of an older trace appends a lower one. So an entry is
//! the zigzag-coded difference to the entry before it in its chunk (the first to 0), and a
//! reader sorts and deduplicates what it decodes. A number already in the last chunk is not
//! appended again; one in an older chunk may be (a replay or a late span of a trace whose
//! entry was appended before the chunk filled), which costs a byte and changes no result.

use rusqlite::types::Value as Sql;
use rusqlite::{params, Connection, OptionalExtension};

/// A chunk's list stays under this many bytes, so that a row (key, value, chunk number and
/// list) fits in one 4 KiB page of SQLite's index B-tree (its largest cell kept in the page
/// is about 1,000 bytes) and a batch rewrites little.
pub const CHUNK_BYTES: usize = 800;

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `n` to a chunk whose last entry is `prev` (0 for an empty chunk).
pub fn push(list: &mut Vec<u8>, prev: &mut i64, n: i64) {
    put_varint(list, zigzag(n.wrapping_sub(*prev)));
    *prev = n;
}

/// The bytes `n` takes when appended after `prev`.
fn cost(prev: i64, n: i64) -> usize {
    let z = zigzag(n.wrapping_sub(prev));
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

/// A list that cannot be decoded: cut inside a varint, or a varint over ten bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Corrupt;

/// Decodes a chunk's entries onto `out`, in the order they were appended.
pub fn decode(list: &[u8], out: &mut Vec<i64>) -> Result<(), Corrupt> {
    let mut prev = 0i64;
    let mut i = 0;
    while i < list.len() {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = *list.get(i).ok_or(Corrupt)?;
            i += 1;
            if shift == 63 && b > 1 {
                return Err(Corrupt);
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err(Corrupt);
            }
        }
        prev = prev.wrapping_add(unzigzag(v));
        out.push(prev);
    }
    Ok(())
}

/// Appends the trace numbers `nos` to the list of (`key`, `value`), inside the writer's
/// transaction: the last chunk is read, extended, and written back; when it would pass
/// [`CHUNK_BYTES`] the next chunk begins. Returns the chunks written.
pub fn append(conn: &Connection, key: i64, value: &Sql, nos: &[i64]) -> rusqlite::Result<usize> {
    let tail: Option<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT chunk, list FROM postings WHERE key = ?1 AND value = ?2 \
             ORDER BY chunk DESC LIMIT 1",
        )?
        .query_row(params![key, value], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (mut chunk, mut list) = tail.unwrap_or((0, Vec::new()));
    let mut held = Vec::new();
    // A list that does not decode (a damaged file) is not extended: a new chunk begins.
    if decode(&list, &mut held).is_err() {
        chunk += 1;
        list.clear();
        held.clear();
    }
    let mut prev = held.last().copied().unwrap_or(0);
    let mut last_max = held.iter().copied().max().unwrap_or(i64::MIN);
    let mut written = 0;
    let mut dirty = false;
    let mut write = conn.prepare_cached(
        "INSERT OR REPLACE INTO postings (key, value, chunk, list) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for &n in nos {
        // Already in the last chunk: a late span or a replay of a trace appended there. A
        // number above every one held is new; below, the held ones are looked through.
        if n <= last_max && held.contains(&n) {
            continue;
        }
        if !list.is_empty() && list.len() + cost(prev, n) > CHUNK_BYTES {
            write.execute(params![key, value, chunk, list])?;
            written += 1;
            chunk += 1;
            list.clear();
            held.clear();
            prev = 0;
            last_max = i64::MIN;
        }
        push(&mut list, &mut prev, n);
        held.push(n);
        last_max = last_max.max(n);
        dirty = true;
    }
    if dirty {
        write.execute(params![key, value, chunk, list])?;
        written += 1;
    }
    Ok(written)
}

/// Every trace number listed under (`key`, `value`), appended to `out` unsorted and perhaps
/// repeated. A chunk that cannot be decoded is an error naming the key.
pub fn read(conn: &Connection, key: i64, value: &Sql, out: &mut Vec<i64>) -> Result<(), String> {
    let mut stmt = conn
        .prepare_cached("SELECT list FROM postings WHERE key = ?1 AND value = ?2")
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query(params![key, value]).map_err(|e| e.to_string())?;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let list = row.get_ref(0).map_err(|e| e.to_string())?;
        let bytes = list.as_blob().map_err(|e| e.to_string())?;
        decode(bytes, out)
            .map_err(|_| format!("the attribute index's list for key {key} is damaged"))?;
    }
    Ok(())
}

/// Sorts and deduplicates `v`.
pub fn normalize(v: &mut Vec<i64>) {
    v.sort_unstable();
    v.dedup();
}

/// The numbers in both sorted, deduplicated lists.
pub fn intersect(a: &[i64], b: &[i64]) -> Vec<i64> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(nos: &[i64]) -> Vec<u8> {
        let mut list = Vec::new();
        let mut prev = 0;
        for &n in nos {
            push(&mut list, &mut prev, n);
        }
        list
    }

    #[test]
    fn lists_decode_to_what_was_appended_in_order() {
        let cases: Vec<Vec<i64>> = vec![
            vec![],
            vec![0],
            vec![1, 2, 3, 1_000_000, 7, 7, -5],
            vec![i64::MAX, i64::MIN, 0, i64::MAX, -1, i64::MIN],
            (1..2000).collect(),
            (1..2000).rev().collect(),
        ];
        for nos in cases {
            let list = encoded(&nos);
            let mut out = Vec::new();
            decode(&list, &mut out).unwrap();
            assert_eq!(out, nos);
            // Each entry's cost is what it takes.
            let mut prev = 0;
            let total: usize = nos
                .iter()
                .map(|&n| {
                    let c = cost(prev, n);
                    prev = n;
                    c
                })
                .sum();
            assert_eq!(total, list.len());
        }
        // Dense numbers take a byte each.
        assert_eq!(encoded(&(1..1001).collect::<Vec<_>>()).len(), 1000);
    }

    #[test]
    fn damaged_lists_are_errors_not_panics() {
        let mut out = Vec::new();
        // Cut inside a varint.
        assert_eq!(decode(&[0x80], &mut out), Err(Corrupt));
        assert_eq!(decode(&[0x02, 0xff, 0xff], &mut out), Err(Corrupt));
        // Eleven bytes, and ten whose last carries bits past 64.
        assert_eq!(decode(&[0xff; 11], &mut out), Err(Corrupt));
        let mut ten = vec![0xff; 9];
        ten.push(0x02);
        assert_eq!(decode(&ten, &mut out), Err(Corrupt));
        // The largest varint decodes.
        let mut max = vec![0xff; 9];
        max.push(0x01);
        out.clear();
        decode(&max, &mut out).unwrap();
        assert_eq!(out, vec![unzigzag(u64::MAX)]);
        // Every byte string either decodes or is refused.
        for a in 0..=255u8 {
            for b in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let _ = decode(&[a, b, a], &mut Vec::new());
            }
        }
    }

    fn table() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::schema::POSTINGS).unwrap();
        conn
    }

    fn listed(conn: &Connection, key: i64, value: &Sql) -> Vec<i64> {
        let mut out = Vec::new();
        read(conn, key, value, &mut out).unwrap();
        out
    }

    #[test]
    fn appends_fill_chunks_and_read_back_every_number() {
        let conn = table();
        let v = Sql::Text("GET".into());
        // 5,000 traces in batches of 100, with a late span of an old trace in each batch.
        let mut all = Vec::new();
        for batch in 0..50i64 {
            let mut nos: Vec<i64> = (batch * 100 + 1..=batch * 100 + 100).collect();
            if batch > 0 {
                nos.insert(0, batch * 7);
            }
            append(&conn, 1, &v, &nos).unwrap();
            all.extend(nos);
        }
        let chunks: i64 = conn
            .query_row("SELECT count(*) FROM postings", [], |r| r.get(0))
            .unwrap();
        assert!(chunks > 1, "{chunks} chunks");
        let max: i64 = conn
            .query_row("SELECT max(length(list)) FROM postings", [], |r| r.get(0))
            .unwrap();
        assert!(max as usize <= CHUNK_BYTES, "{max}");
        let mut got = listed(&conn, 1, &v);
        normalize(&mut got);
        normalize(&mut all);
        assert_eq!(got, all);
        // Other keys and values hold nothing.
        assert!(listed(&conn, 2, &v).is_empty());
        assert!(listed(&conn, 1, &Sql::Text("PUT".into())).is_empty());
    }

    #[test]
    fn a_replay_into_the_last_chunk_appends_nothing() {
        let conn = table();
        let v = Sql::Integer(200);
        append(&conn, 3, &v, &[10, 11, 12]).unwrap();
        let before: Vec<u8> = conn
            .query_row("SELECT list FROM postings", [], |r| r.get(0))
            .unwrap();
        assert_eq!(append(&conn, 3, &v, &[10, 12]).unwrap(), 0);
        let after: Vec<u8> = conn
            .query_row("SELECT list FROM postings", [], |r| r.get(0))
            .unwrap();
        assert_eq!(before, after);
        assert_eq!(listed(&conn, 3, &v), vec![10, 11, 12]);
    }

    #[test]
    fn a_damaged_last_chunk_is_left_and_a_new_one_begins() {
        let conn = table();
        let v = Sql::Integer(1);
        conn.execute(
            "INSERT INTO postings (key, value, chunk, list) VALUES (5, 1, 0, x'80')",
            [],
        )
        .unwrap();
        append(&conn, 5, &v, &[4]).unwrap();
        let chunks: i64 = conn
            .query_row("SELECT count(*) FROM postings", [], |r| r.get(0))
            .unwrap();
        assert_eq!(chunks, 2);
        let err = read(&conn, 5, &v, &mut Vec::new()).unwrap_err();
        assert!(err.contains("key 5"), "{err}");
    }

    #[test]
    fn intersections_keep_what_both_hold() {
        assert_eq!(intersect(&[1, 3, 5, 7], &[2, 3, 4, 7, 9]), vec![3, 7]);
        assert!(intersect(&[], &[1]).is_empty());
        assert_eq!(intersect(&[i64::MIN, 0], &[i64::MIN]), vec![i64::MIN]);
    }
}
