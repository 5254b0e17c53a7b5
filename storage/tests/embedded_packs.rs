//! Log packs: the logs of a closed day are moved out of their rows into compressed packs by
//! the retention pass. Every log query must answer exactly as it did from the rows, in both
//! orders and page by page; a replay of packed logs stores nothing; a late log for a closed
//! day is found, and packed on the next pass.

mod common;

use common::conformance::{log, service};
use dlog_core::model::LogEntry;
use std::sync::Arc;

use dlog_storage::embedded::EmbeddedStore;
use dlog_storage::{Document, LogCursor, LogOrder, LogQuery, RetentionPolicy, TimeRange};
use serde_json::json;

const MS: u64 = 1_000_000;
const DAY: u64 = 86_400_000 * MS;
const TIE: u64 = 11 * 3_600_000 * MS;
const WORDS: [&str; 6] = [
    "payment",
    "Order",
    "cache",
    "retry",
    "upstream",
    "überweisung",
];

fn trace_of(i: u64) -> String {
    format!("{:032x}", 0x7ace_0000 + i % 40)
}

fn span_of(i: u64) -> String {
    format!("{:016x}", 0x5a_0000 + i % 25)
}

/// The fixture: 3,000 logs over two closed days and today, three services (one with two
/// instances), three levels, some with trace and span ids, every tenth sharing one time of its
/// day (ordered by identity there), a rare token in a few.
fn fixture(today: u64) -> Vec<LogEntry> {
    let services = [
        service("alpha", "al-1", &[]),
        service("beta", "be-1", &[]),
        service("beta", "be-2", &[]),
        service("gamma", "ga-1", &[]),
    ];
    (0..3000u64)
        .map(|i| {
            let day = today - (2 - i % 3) * DAY;
            // Mid-day, so that the tied records straddle packs.
            let time = if i.is_multiple_of(10) {
                day + TIE
            } else {
                day + (i * 7919 % 80_000) * 1000 * MS + i
            };
            let mut body = format!(
                "{} {} number {i}",
                WORDS[(i % 6) as usize],
                WORDS[(i / 6 % 6) as usize]
            );
            if i.is_multiple_of(97) {
                body.push_str(" RARE-token");
            }
            let trace = i.is_multiple_of(2).then(|| (trace_of(i), span_of(i)));
            let mut l = log(
                &services[(i % 4) as usize],
                time,
                ["INFO", "WARN", "ERROR"][(i % 3 + i / 3 % 2) as usize % 3],
                &body,
                trace.as_ref().map(|(t, s)| (t.as_str(), s.as_str())),
                &[
                    ("n", json!(i)),
                    ("component", json!(["db", "http"][(i % 2) as usize])),
                ],
            );
            if !i.is_multiple_of(4) {
                l.span_id = None;
            }
            l
        })
        .collect()
}

/// Every query, and paging through everything oldest first, with their answers.
async fn answers(store: &dyn dlog_storage::Store, today: u64) -> Vec<(String, Vec<LogEntry>)> {
    let range = |from: u64, to: u64| TimeRange {
        start_unix_nano: Some(from),
        end_unix_nano: Some(to),
    };
    let q = |f: &dyn Fn(&mut LogQuery)| {
        let mut q = LogQuery {
            limit: 100,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    let queries: Vec<(&str, LogQuery)> = vec![
        ("newest", q(&|_| {})),
        ("everything", q(&|q| q.limit = 5000)),
        ("text", q(&|q| q.text = Some("order number 1".into()))),
        ("text any case", q(&|q| q.text = Some("rare-TOKEN".into()))),
        ("text short", q(&|q| q.text = Some("y ".into()))),
        ("text non-ascii", q(&|q| q.text = Some("überw".into()))),
        ("text none", q(&|q| q.text = Some("nowhere at all".into()))),
        ("level", q(&|q| q.level = Some("warn".into()))),
        ("service", q(&|q| q.service = Some("beta".into()))),
        ("trace", q(&|q| q.trace_id = Some(trace_of(6)))),
        (
            "trace upper",
            q(&|q| q.trace_id = Some(trace_of(8).to_uppercase())),
        ),
        ("span", q(&|q| q.span_id = Some(span_of(12)))),
        (
            "across a day",
            q(&|q| q.time = range(today - DAY - 3 * 3_600_000 * MS, today + 3 * 3_600_000 * MS)),
        ),
        (
            "combined",
            q(&|q| {
                q.text = Some("payment".into());
                q.level = Some("INFO".into());
                q.service = Some("beta".into());
                q.time = range(today - 2 * DAY, today + DAY);
            }),
        ),
        (
            "oldest first",
            q(&|q| {
                q.order = LogOrder::OldestFirst;
                q.text = Some("cache".into());
            }),
        ),
    ];
    let mut out = Vec::new();
    for (name, query) in queries {
        out.push((name.to_string(), store.search_logs(&query).await.unwrap()));
    }
    // Pages of 37, oldest first, through everything and through a text.
    for text in [None, Some("retry")] {
        let all = pages(store, text, 37).await;
        out.push((format!("pages {text:?}"), all));
    }
    out
}

/// Every record oldest first, read page by page through the cursor.
async fn pages(store: &dyn dlog_storage::Store, text: Option<&str>, limit: usize) -> Vec<LogEntry> {
    let mut all = Vec::new();
    let mut after: Option<LogCursor> = None;
    loop {
        let page = store
            .search_logs(&LogQuery {
                order: LogOrder::OldestFirst,
                after: after.clone(),
                text: text.map(str::to_string),
                limit,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(LogCursor::of(last));
        all.extend(page);
    }
    all
}

/// Per day file: (log rows, packed records, log block rows, pages, free pages), and the packs'
/// (earliest, latest) times.
type DayState = (i64, i64, i64, i64, i64, Vec<(i64, i64)>);

fn day_files(dir: &std::path::Path) -> Vec<(String, DayState)> {
    let mut out = Vec::new();
    for part in common::partition_files(dir) {
        let conn = rusqlite::Connection::open(&part).unwrap();
        let one = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        let ranges = conn
            .prepare("SELECT min_time, max_time FROM log_packs")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        out.push((
            part.file_name().unwrap().to_string_lossy().into_owned(),
            (
                one("SELECT count(*) FROM logs"),
                one("SELECT coalesce(sum(count), 0) FROM log_packs"),
                one("SELECT count(*) FROM log_blocks"),
                one("PRAGMA page_count"),
                one("PRAGMA freelist_count"),
                ranges,
            ),
        ));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_logs_answer_every_query_as_their_rows_did() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let store: Arc<dyn dlog_storage::Store> = embedded.clone();
    let now = dlog_storage::now_unix_nano();
    let today = now / DAY * DAY;
    // Packing as if two hours into today: both earlier days are closed.
    let pack_now = today + 2 * 3_600_000 * MS;
    let logs = fixture(today);
    let docs: Vec<Document> = logs.iter().cloned().map(Document::Log).collect();
    for batch in docs.chunks(500) {
        store.write(batch).await.unwrap();
    }
    let before = answers(store.as_ref(), today).await;
    // The fixture reaches every query: none answers nothing but the one that must.
    for (name, found) in &before {
        assert_eq!(
            found.is_empty(),
            name == "text none",
            "{name}: {}",
            found.len()
        );
    }
    assert_eq!(before[1].1.len(), 3000);
    assert_eq!(before[before.len() - 2].1.len(), 3000);
    let unpacked = day_files(dir.path());
    assert_eq!(unpacked.len(), 3);
    let check = |what: &str, now: &Vec<(String, Vec<LogEntry>)>| {
        for ((name, was), (_, is)) in before.iter().zip(now) {
            assert_eq!(was, is, "{what}: {name}");
        }
    };

    // Three slices of 100 (a budget of 300): the oldest day is part rows, part packs.
    let moved = embedded
        .compact_closed_days(pack_now, 100, 300)
        .await
        .unwrap();
    assert_eq!(moved, 300);
    let half = day_files(dir.path());
    assert_eq!((half[0].1 .0, half[0].1 .1), (700, 300));
    assert_eq!((half[1].1 .0, half[1].1 .1), (1000, 0));
    check("part packed", &answers(store.as_ref(), today).await);

    // The rest in slices of 250: the newer closed day's 1,000 rows end on a slice boundary.
    let moved = embedded
        .compact_closed_days(pack_now, 250, u64::MAX)
        .await
        .unwrap();
    assert_eq!(moved, 1700);
    let packed = day_files(dir.path());
    for (i, (name, (rows, in_packs, blocks, pages, free, ranges))) in packed.iter().enumerate() {
        if i == 2 {
            // Today: rows, as written.
            assert_eq!((*rows, *in_packs), (1000, 0), "{name}");
            continue;
        }
        assert_eq!((*rows, *in_packs, *blocks), (0, 1000, 0), "{name}");
        // The space the rows and their indexes took is given back to the filesystem (less
        // than an eighth of the file may stay free).
        assert!(*free * 8 < *pages, "{name}: {free} free of {pages}");
        assert!(
            *pages < unpacked[i].1 .3,
            "{name}: {pages} pages of {}",
            unpacked[i].1 .3
        );
        if i == 0 {
            continue;
        }
        // The newer closed day's packs are of 250 records: the 100 sharing one time (about
        // 445 come before them) are split between its second and third packs.
        let tie = (today - (2 - i as u64) * DAY + TIE) as i64;
        assert!(
            ranges.iter().any(|r| r.1 == tie && r.0 < tie),
            "{name}: {ranges:?}"
        );
        assert!(
            ranges.iter().any(|r| r.0 == tie && r.1 > tie),
            "{name}: {ranges:?}"
        );
    }
    assert_eq!(
        dlog_storage::embedded::count_rows(dir.path(), "logs").unwrap(),
        3000
    );
    check("packed", &answers(store.as_ref(), today).await);

    // A replay of every log stores nothing, packed or not.
    for batch in docs.chunks(700) {
        store.write(batch).await.unwrap();
    }
    assert_eq!(
        dlog_storage::embedded::count_rows(dir.path(), "logs").unwrap(),
        3000
    );
    check("replayed", &answers(store.as_ref(), today).await);

    // A late log for the oldest day: found among the packs as a row, then packed by the
    // retention pass (that day ended more than an hour ago, whatever the time now).
    let mut late = logs[0].clone();
    late.body = "late arrival for a closed day".into();
    late.time_unix_nano += 1;
    assert_eq!(late.time_unix_nano / DAY * DAY, today - 2 * DAY);
    store.write(&[Document::Log(late.clone())]).await.unwrap();
    let find = LogQuery {
        text: Some("late arrival".into()),
        ..Default::default()
    };
    assert_eq!(store.search_logs(&find).await.unwrap(), vec![late.clone()]);
    assert_eq!(day_files(dir.path())[0].1 .0, 1);
    store
        .apply_retention(&RetentionPolicy::default(), now)
        .await
        .unwrap();
    assert_eq!(day_files(dir.path())[0].1 .0, 0);
    assert_eq!(store.search_logs(&find).await.unwrap(), vec![late.clone()]);
    store.write(&[Document::Log(late.clone())]).await.unwrap();
    assert_eq!(
        dlog_storage::embedded::count_rows(dir.path(), "logs").unwrap(),
        3001
    );
    let everything = store
        .search_logs(&LogQuery {
            limit: 5000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(everything.len(), 3001);

    // Twenty more late logs at the oldest day's shared time, packed: a pack overlapping the
    // others, whose records sort among theirs. Pages oldest first still give every record
    // once, in order (a page ending inside the shared time must read that pack too).
    let late: Vec<Document> = (0..20)
        .map(|i| {
            let mut l = logs[0].clone();
            l.body = format!("late at the shared time {i}");
            Document::Log(l)
        })
        .collect();
    store.write(&late).await.unwrap();
    embedded
        .compact_closed_days(pack_now, 250, u64::MAX)
        .await
        .unwrap();
    assert_eq!(day_files(dir.path())[0].1 .0, 0);
    let mut everything = store
        .search_logs(&LogQuery {
            limit: 5000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(everything.len(), 3021);
    everything.reverse();
    for limit in [37, 7] {
        let paged = pages(store.as_ref(), None, limit).await;
        assert_eq!(paged, everything, "pages of {limit}");
    }
}
