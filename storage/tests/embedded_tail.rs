//! Reading logs oldest first page by page, as the live tail does, when a sender stamps
//! thousands of records with one time: each record is read once, in order, and decoded once.

mod common;

use common::conformance::{log, service};
use dlog_storage::embedded::{self, EmbeddedStore};
use dlog_storage::prelude::*;
use dlog_storage::{Document, LogCursor, LogOrder, LogQuery};

const MS: u64 = 1_000_000;

/// Regression: records sharing the cursor's time were decoded again on every page (their
/// order inside one time is by document id, which only decoding gave), so k records of one
/// time cost about k²/500 decodes through the tail's pages of 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_records_sharing_one_time_are_paged_without_decoding_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let svc = service("stamp", "st-1", &[]);
    let t = dlog_storage::now_unix_nano() - 60_000 * MS;
    let k = 5_000usize;
    let written: Vec<_> = (0..k)
        .map(|i| log(&svc, t, "INFO", &format!("same stamp {i}"), None, &[]))
        .collect();
    for chunk in written.chunks(1000) {
        store
            .write(&chunk.iter().cloned().map(Document::Log).collect::<Vec<_>>())
            .await
            .unwrap();
    }
    let mut expected = written.clone();
    expected.sort_by_key(LogCursor::of);

    let before = embedded::log_decodes();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store
            .search_logs(&LogQuery {
                service: Some("stamp".into()),
                order: LogOrder::OldestFirst,
                after: after.clone(),
                limit: 500,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(LogCursor::of(last));
        got.extend(page);
        pages += 1;
        assert!(pages <= k / 500 + 1, "paging does not end");
    }
    let decodes = embedded::log_decodes() - before;
    println!(
        "{k} records of one time in pages of 500: {pages} pages, {decodes} decodes, {:?}",
        started.elapsed()
    );
    assert_eq!(got.len(), k);
    assert_eq!(
        got, expected,
        "every record once, in (time, document id) order"
    );
    assert_eq!(decodes, k as u64, "each record decoded once");
}
