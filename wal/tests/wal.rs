//! The local log as its users see it: records appended are durable before the append
//! returns, read back whole and in order by every reader, survive a reopen with a torn tail,
//! and are removed only once every reader has passed them.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use dlog_core::source::{Mark, RawRecord, Source};
use dlog_wal::{AppendError, Frames, Wal, WalConfig, WalError};

fn config(dir: &Path) -> WalConfig {
    WalConfig {
        segment_bytes: 4096,
        max_bytes: 1 << 20,
        ..WalConfig::new(dir)
    }
}

fn frames(from: u32, count: u32, value_len: usize) -> Frames {
    let mut frames = Frames::new();
    for i in from..from + count {
        let key = format!("key-{i}");
        let value = format!("{i:08}").repeat(value_len / 8 + 1);
        frames
            .push(
                if i.is_multiple_of(2) {
                    "trace_logs"
                } else {
                    "service_logs"
                },
                Some(key.as_bytes()),
                &[("otlp.encoding", b"otlp_proto")],
                &value.as_bytes()[..value_len],
                Some(i64::from(i)),
            )
            .unwrap();
    }
    frames
}

fn check_record(record: &RawRecord, i: u32, value_len: usize) {
    assert_eq!(record.offset, i64::from(i));
    assert_eq!(
        record.key_str().as_deref(),
        Some(format!("key-{i}").as_str())
    );
    assert_eq!(
        record.topic,
        if i.is_multiple_of(2) {
            "trace_logs"
        } else {
            "service_logs"
        }
    );
    assert_eq!(record.payload.len(), value_len);
    assert!(record.payload.starts_with(format!("{i:08}").as_bytes()));
    assert_eq!(record.header("otlp.encoding"), Some(&b"otlp_proto"[..]));
    assert_eq!(record.timestamp_ms, Some(i64::from(i)));
}

/// Reads exactly `n` records (the log holds them all already).
async fn read_n(reader: &mut dlog_wal::WalReader, n: usize) -> Vec<RawRecord> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = reader
            .next_batch(n - out.len(), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!batch.is_empty(), "records missing after {}", out.len());
        out.extend(batch);
    }
    out
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_come_back_whole_and_in_order_across_segments_for_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path())).unwrap();
    let mut indexing = wal.reader("indexing").unwrap();
    let mut alerting = wal.reader("alerting").unwrap();
    let mut next = 0u32;
    for batch in 0..40u32 {
        let count = 1 + batch % 7;
        let first = wal.append(frames(next, count, 300)).await.unwrap();
        assert_eq!(first, u64::from(next));
        next += count;
    }
    assert_eq!(wal.end_offset(), u64::from(next));
    assert!(
        segment_files(dir.path()).len() > 3,
        "4 KiB segments must have rolled"
    );
    for reader in [&mut indexing, &mut alerting] {
        let records = read_n(reader, next as usize).await;
        for (i, record) in records.iter().enumerate() {
            check_record(record, i as u32, 300);
        }
        // Nothing more: an empty batch after the linger.
        let more = reader
            .next_batch(10, Duration::from_millis(20))
            .await
            .unwrap();
        assert!(more.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_reader_wakes_when_records_become_durable() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path())).unwrap();
    let mut reader = wal.reader("indexing").unwrap();
    let waiting = tokio::spawn(async move {
        let batch = reader
            .next_batch(10, Duration::from_secs(30))
            .await
            .unwrap();
        (batch, reader)
    });
    tokio::task::yield_now().await;
    wal.append(frames(0, 3, 10)).await.unwrap();
    let (batch, _reader) = waiting.await.unwrap();
    assert!(!batch.is_empty() && batch.len() <= 3);
    check_record(&batch[0], 0, 10);
}

fn poll_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// kill -9 cannot prove an fsync (the page cache survives it), so the ordering is shown
/// directly: while the fsync covering an append is held, the append has not completed; and
/// appends that arrive meanwhile share the next fsync (group commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_append_completes_before_the_fsync_covering_it_returns_and_waiting_appends_share_one() {
    let dir = tempfile::tempdir().unwrap();
    let (entered_tx, entered) = mpsc::channel::<u64>();
    let (release, released) = mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let syncs = Arc::new(AtomicU64::new(0));
    let mut config = config(dir.path());
    config.before_sync = Some(Arc::new({
        let syncs = Arc::clone(&syncs);
        move || {
            let n = syncs.fetch_add(1, Ordering::SeqCst);
            entered_tx.send(n).unwrap();
            released.lock().unwrap().recv().unwrap();
        }
    }));
    let wal = Wal::open(config).unwrap();

    let mut first = Box::pin(wal.append(frames(0, 1, 10)));
    assert!(poll_once(first.as_mut()).is_pending());
    // The writer has written the first append and is about to fsync it.
    assert_eq!(entered.recv_timeout(Duration::from_secs(10)).unwrap(), 0);
    // 50 more appends queue up behind the held fsync (polled once: each is handed to the
    // writer on its first poll).
    let mut waiting: Vec<_> = (0..50u32)
        .map(|i| Box::pin(wal.append(frames(1 + i, 1, 10))))
        .collect();
    for future in &mut waiting {
        assert!(poll_once(future.as_mut()).is_pending());
    }
    assert!(
        poll_once(first.as_mut()).is_pending(),
        "the append completed while its fsync was still held"
    );
    assert_eq!(wal.metrics().fsyncs.get(), 0);

    release.send(()).unwrap();
    assert_eq!(first.await, Ok(0));
    // The second group holds all 50: one fsync for them, held too until released.
    assert_eq!(entered.recv_timeout(Duration::from_secs(10)).unwrap(), 1);
    for future in &mut waiting {
        assert!(poll_once(future.as_mut()).is_pending());
    }
    release.send(()).unwrap();
    let mut offsets = Vec::new();
    for future in waiting {
        offsets.push(future.await.unwrap());
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=50).collect::<Vec<u64>>());
    assert_eq!(wal.metrics().fsyncs.get(), 2);
    assert_eq!(wal.metrics().appends.get(), 51);
    assert_eq!(syncs.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_at_open_and_appends_continue_after_the_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(config(dir.path())).unwrap();
        for i in 0..30u32 {
            wal.append(frames(i, 1, 200)).await.unwrap();
        }
        wal.close().await;
    }
    let last = segment_files(dir.path()).pop().unwrap();
    let whole_len = std::fs::metadata(&last).unwrap().len();
    // A crash in the middle of a write: half a frame header and some payload.
    OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(&[0x40, 0x00, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3])
        .unwrap();

    let wal = Wal::open(config(dir.path())).unwrap();
    assert_eq!(wal.metrics().recovered_cut_bytes.get(), 11);
    assert_eq!(std::fs::metadata(&last).unwrap().len(), whole_len);
    // Appends continue past every offset the cut bytes could have held (11 bytes: one), so
    // no offset a reader might have seen is given to another record.
    assert_eq!(wal.end_offset(), 31);
    assert_eq!(wal.append(frames(31, 2, 200)).await.unwrap(), 31);
    let mut reader = wal.reader("indexing").unwrap();
    let records = read_n(&mut reader, 32).await;
    let offsets: Vec<u32> = (0..30).chain(31..33).collect();
    for (record, i) in records.iter().zip(offsets) {
        check_record(record, i, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_failed_roll_an_empty_leftover_segment_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(config(dir.path())).unwrap();
        for i in 0..60u32 {
            wal.append(frames(i, 1, 500)).await.unwrap();
        }
        wal.close().await;
    }
    let before = segment_files(dir.path());
    // A roll that created its file and then failed, long ago: an empty segment numbered
    // inside the first one.
    std::fs::write(dir.path().join(format!("{:020}.wal", 3)), b"").unwrap();
    let wal = Wal::open(config(dir.path())).unwrap();
    assert_eq!(wal.end_offset(), 60);
    assert_eq!(
        segment_files(dir.path()),
        before,
        "the leftover goes, the rest stays"
    );
    let mut reader = wal.reader("indexing").unwrap();
    for (i, record) in read_n(&mut reader, 60).await.iter().enumerate() {
        check_record(record, i as u32, 500);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_that_could_never_fit_is_refused_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_bytes = 16 * 1024;
    let wal = Wal::open(config).unwrap();
    let err = wal.append(frames(0, 1, 20_000)).await.unwrap_err();
    assert!(matches!(err, AppendError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("raise max_bytes"), "{err}");
    assert_eq!(wal.append(frames(0, 1, 100)).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_inside_an_older_segment_loses_only_its_tail_and_never_hands_out_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(config(dir.path())).unwrap();
        for i in 0..60u32 {
            wal.append(frames(i, 1, 500)).await.unwrap();
        }
        wal.close().await;
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 4);
    // Flip one payload byte in the middle of the second segment.
    let victim = &files[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(victim, &bytes).unwrap();
    let base: u64 = victim
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();

    let wal = Wal::open(config(dir.path())).unwrap();
    // The later segments are whole and kept; the log still ends where it did.
    assert_eq!(wal.end_offset(), 60);
    assert_eq!(segment_files(dir.path()).len(), files.len());
    let mut reader = wal.reader("indexing").unwrap();
    let mut records = Vec::new();
    loop {
        let batch = reader
            .next_batch(100, Duration::from_millis(50))
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        records.extend(batch);
    }
    // Every record handed out is whole and at its own offset; only the damaged segment's
    // tail is missing.
    for record in &records {
        check_record(record, record.offset as u32, 500);
    }
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    let lost: Vec<i64> = (0..60).filter(|o| !offsets.contains(o)).collect();
    assert!(!lost.is_empty(), "nothing was lost to the damage?");
    assert!(
        lost.iter().all(|o| *o as u64 >= base) && lost.len() < 10,
        "lost {lost:?}"
    );
    assert_eq!(*offsets.last().unwrap(), 59);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_resume_from_their_acknowledged_position_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(config(dir.path())).unwrap();
        wal.append(frames(0, 20, 50)).await.unwrap();
        let mut indexing = wal.reader("indexing").unwrap();
        let mut alerting = wal.reader("alerting").unwrap();
        let got = read_n(&mut indexing, 12).await;
        indexing.ack(&Mark::latest(&got[..12])).await.unwrap();
        // Read but not acknowledged: handed out again after the reopen.
        let got = read_n(&mut alerting, 20).await;
        alerting.ack(&Mark::latest(&got[..5])).await.unwrap();
        wal.close().await;
    }
    let wal = Wal::open(config(dir.path())).unwrap();
    let mut indexing = wal.reader("indexing").unwrap();
    let mut alerting = wal.reader("alerting").unwrap();
    assert_eq!((indexing.position(), alerting.position()), (12, 5));
    check_record(&read_n(&mut indexing, 1).await[0], 12, 50);
    check_record(&read_n(&mut alerting, 1).await[0], 5, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_go_only_once_every_reader_has_passed_them() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path())).unwrap();
    let mut fast = wal.reader("indexing").unwrap();
    let slow = wal.reader("alerting").unwrap();
    for i in 0..60u32 {
        wal.append(frames(i, 1, 500)).await.unwrap();
    }
    let before = segment_files(dir.path()).len();
    let all = read_n(&mut fast, 60).await;
    fast.ack(&Mark::latest(&all)).await.unwrap();
    wal.close().await; // saves positions and removes what every reader passed
    assert_eq!(
        segment_files(dir.path()).len(),
        before,
        "the slow reader has passed nothing"
    );

    let wal = Wal::open(config(dir.path())).unwrap();
    let mut slow_again = wal.reader("alerting").unwrap();
    drop(slow);
    let _fast = wal.reader("indexing").unwrap();
    let got = read_n(&mut slow_again, 40).await;
    slow_again.ack(&Mark::latest(&got)).await.unwrap();
    wal.close().await;
    let left = segment_files(dir.path());
    assert!(left.len() < before, "passed segments must be removed");
    let wal = Wal::open(config(dir.path())).unwrap();
    assert!(wal.first_offset() > 0 && wal.first_offset() <= 40);
    let mut slow = wal.reader("alerting").unwrap();
    let rest = read_n(&mut slow, 20).await;
    for (i, record) in rest.iter().enumerate() {
        check_record(record, 40 + i as u32, 500);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_refuses_appends_naming_the_slow_reader_until_it_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_bytes = 16 * 1024;
    config.position_interval = Duration::from_millis(10);
    let wal = Wal::open(config).unwrap();
    let mut reader = wal.reader("indexing").unwrap();
    let mut appended = 0u32;
    let refusal = loop {
        match wal.append(frames(appended, 1, 500)).await {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
        assert!(appended < 1000, "the bound never bit");
    };
    match &refusal {
        AppendError::Full {
            slowest,
            lag,
            max_bytes,
            ..
        } => {
            assert_eq!(slowest, "indexing");
            assert_eq!(*lag, u64::from(appended));
            assert_eq!(*max_bytes, 16 * 1024);
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(refusal.to_string().contains("`indexing`"), "{refusal}");
    assert!(wal.metrics().bytes.get() <= 16 * 1024);
    assert_eq!(wal.metrics().refused_full.get(), 1);

    // The reader catches up; once its position is saved, segments go and appends resume.
    let all = read_n(&mut reader, appended as usize).await;
    reader.ack(&Mark::latest(&all)).await.unwrap();
    let mut resumed = false;
    for _ in 0..500 {
        if wal.append(frames(appended, 1, 500)).await.is_ok() {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(resumed, "appends never resumed after the reader caught up");
    assert!(wal.metrics().removed_segments.get() > 0);
    let next = read_n(&mut reader, 1).await;
    check_record(&next[0], appended, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _wal = Wal::open(config(dir.path())).unwrap();
    let err = Wal::open(config(dir.path())).unwrap_err();
    assert!(matches!(err, WalError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use by another process"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_private_to_the_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let wal = Wal::open(config(&wal_dir)).unwrap();
    wal.append(frames(0, 1, 10)).await.unwrap();
    let mut reader = wal.reader("indexing").unwrap();
    let got = read_n(&mut reader, 1).await;
    reader.ack(&Mark::latest(&got)).await.unwrap();
    wal.close().await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&wal_dir), 0o700);
    assert_eq!(mode(&wal_dir.join("readers")), 0o700);
    for file in segment_files(&wal_dir) {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    assert_eq!(mode(&wal_dir.join("readers/indexing.pos")), 0o600);
}

#[test]
fn settings_that_could_never_work_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_bytes = config.segment_bytes;
    let err = Wal::open(config).unwrap_err();
    assert!(err.to_string().contains("max_bytes"), "{err}");
    let mut config = WalConfig::new(dir.path());
    config.segment_bytes = 10;
    assert!(Wal::open(config)
        .unwrap_err()
        .to_string()
        .contains("segment_bytes"));
}
