//! Log packs: the logs of a closed day are moved out of their rows into compressed packs by
//! the retention pass. Every log query must answer exactly as it did from the rows, in both
//! orders and page by page; a replay of packed logs stores nothing; a late log for a closed
//! day is found, and packed on the next pass.

mod common;

use common::conformance::{log, service};
use dlog_core::model::LogEntry;
use dlog_storage::{
    open_store, Document, LogCursor, LogOrder, LogQuery, RetentionPolicy, StoreConfig, TimeRange,
};
use serde_json::json;

const MS: u64 = 1_000_000;
const DAY: u64 = 86_400_000 * MS;
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
            let time = if i % 10 == 0 {
                day + 3_600_000 * MS
            } else {
                day + (i * 7919 % 80_000) * 1000 * MS + i
            };
            let mut body = format!(
                "{} {} number {i}",
                WORDS[(i % 6) as usize],
                WORDS[(i / 6 % 6) as usize]
            );
            if i % 97 == 0 {
                body.push_str(" RARE-token");
            }
            let trace = (i % 2 == 0).then(|| (trace_of(i), span_of(i)));
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
            if i % 4 != 0 {
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
        let mut all = Vec::new();
        let mut after: Option<LogCursor> = None;
        loop {
            let page = store
                .search_logs(&LogQuery {
                    order: LogOrder::OldestFirst,
                    after: after.clone(),
                    text: text.map(str::to_string),
                    limit: 37,
                    ..Default::default()
                })
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = Some(LogCursor::of(last));
            all.extend(page);
        }
        out.push((format!("pages {text:?}"), all));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_logs_answer_every_query_as_their_rows_did() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let now = dlog_storage::now_unix_nano();
    let today = now / DAY * DAY;
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

    store
        .apply_retention(&RetentionPolicy::default(), now)
        .await
        .unwrap();
    // The two closed days hold packs and no rows; today holds rows.
    let mut packed_days = 0;
    for part in std::fs::read_dir(dir.path().join("partitions"))
        .unwrap()
        .flatten()
    {
        if part.path().extension().is_none_or(|e| e != "sqlite3") {
            continue;
        }
        let conn = rusqlite::Connection::open(part.path()).unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM logs", [], |r| r.get(0))
            .unwrap();
        let packed: i64 = conn
            .query_row("SELECT coalesce(sum(count), 0) FROM log_packs", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(rows + packed, 1000, "{}", part.path().display());
        if packed > 0 {
            assert_eq!(rows, 0);
            packed_days += 1;
        }
    }
    assert_eq!(packed_days, 2);
    assert_eq!(
        dlog_storage::embedded::count_rows(dir.path(), "logs").unwrap(),
        3000
    );
    let after = answers(store.as_ref(), today).await;
    for ((name, was), (_, is)) in before.iter().zip(&after) {
        assert_eq!(was, is, "{name}");
    }

    // A replay of every log stores nothing, packed or not.
    for batch in docs.chunks(700) {
        store.write(batch).await.unwrap();
    }
    assert_eq!(
        dlog_storage::embedded::count_rows(dir.path(), "logs").unwrap(),
        3000
    );
    let replayed = answers(store.as_ref(), today).await;
    for ((name, was), (_, is)) in before.iter().zip(&replayed) {
        assert_eq!(was, is, "{name}");
    }

    // A late log for a closed day: found among the packs as a row, then packed itself.
    let mut late = logs[3].clone();
    late.body = "late arrival for a closed day".into();
    late.time_unix_nano += 1;
    store.write(&[Document::Log(late.clone())]).await.unwrap();
    let find = LogQuery {
        text: Some("late arrival".into()),
        ..Default::default()
    };
    assert_eq!(store.search_logs(&find).await.unwrap(), vec![late.clone()]);
    store
        .apply_retention(&RetentionPolicy::default(), now)
        .await
        .unwrap();
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
}
