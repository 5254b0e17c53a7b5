//! The embedded store's on-disk layout: the shared database, the day partitions, the schema
//! version, and the days partitions are named after.

/// The layout this build writes and reads (`PRAGMA user_version` of every file).
/// 1 was the single-file JSON layout of earlier releases (user_version 0 on disk); 2 kept a
/// log's span id only inside its encoded rest (opening such a store adds the column); 3 did
/// not mark the trace summaries of partitions holding part of a trace without its parent
/// spans, and kept log identities apart from the log rows (opening such a store adds the mark
/// and the identity column); 4 kept the attribute index as one row per trace and value
/// (opening such a store turns it into posting lists).
pub const SCHEMA_VERSION: i32 = 5;

/// ns in a day.
pub const DAY_NS: u64 = 86_400_000_000_000;

/// Pseudo attribute key of the per-trace index: the resource (service instance) of a span.
pub const KEY_RESOURCE: i64 = -1;
/// Pseudo attribute key of the per-trace index: the operation of a span.
pub const KEY_OPERATION: i64 = -2;

/// The shared database: dictionaries, resources, operations, the service registry, alerts.
pub const SHARED: &str = r#"
CREATE TABLE IF NOT EXISTS strings (
    id   INTEGER PRIMARY KEY,
    text TEXT NOT NULL UNIQUE
);
-- Strings that are service, operation, scope or level names, outside the dictionary cap.
CREATE TABLE IF NOT EXISTS names (
    id INTEGER PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS resources (
    id      INTEGER PRIMARY KEY,
    hash    BLOB NOT NULL UNIQUE,
    service INTEGER NOT NULL,
    doc     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS operations (
    service   TEXT NOT NULL,
    operation TEXT NOT NULL,
    span_kind TEXT NOT NULL,
    PRIMARY KEY (service, operation, span_kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS registry (
    service  TEXT NOT NULL,
    instance TEXT NOT NULL,
    last_ns  INTEGER NOT NULL,
    doc      TEXT NOT NULL,
    PRIMARY KEY (service, instance)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    id        TEXT PRIMARY KEY,
    service   TEXT NOT NULL,
    state     TEXT NOT NULL,
    last_seen INTEGER NOT NULL,
    doc       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_by_last_seen ON alerts (last_seen);
"#;

/// Counts kept across restarts: attributes and resources stored but not indexed.
pub const COUNTERS: &str = r#"
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"#;

/// The earliest and latest record time (span start, log or heartbeat time, as sent) each day
/// partition may hold: widened in the shared transaction, before the partition is written, so
/// a search can leave out the files whose range misses its own. A day without a row may hold
/// any time.
pub const BOUNDS: &str = r#"
CREATE TABLE IF NOT EXISTS partition_bounds (
    day    INTEGER PRIMARY KEY,
    min_ns INTEGER NOT NULL,
    max_ns INTEGER NOT NULL
);
"#;

/// One day partition: the spans, trace summaries, attribute index, dependency edges, logs
/// (with their trigram text index) and heartbeats whose (clamped) time falls on that UTC day.
pub const PARTITION: &str = r#"
CREATE TABLE traces (
    trace_no     INTEGER PRIMARY KEY,
    trace_id     BLOB NOT NULL UNIQUE,
    start_ns     INTEGER NOT NULL,
    duration_ns  INTEGER NOT NULL,
    root_service INTEGER NOT NULL,
    root_op      INTEGER NOT NULL,
    span_count   INTEGER NOT NULL,
    error_count  INTEGER NOT NULL,
    services     BLOB NOT NULL,
    open         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX traces_by_start ON traces (start_ns);
CREATE INDEX traces_open ON traces (start_ns) WHERE open = 1;
CREATE TABLE spans (
    trace_no    INTEGER NOT NULL,
    start_ns    INTEGER NOT NULL,
    span_id     BLOB NOT NULL,
    duration_ns INTEGER NOT NULL,
    parent      BLOB,
    resource    INTEGER NOT NULL,
    op          INTEGER NOT NULL,
    flags       INTEGER NOT NULL,
    body        BLOB NOT NULL,
    PRIMARY KEY (trace_no, start_ns, span_id)
) WITHOUT ROWID;
CREATE TABLE edges (
    trace_no INTEGER NOT NULL,
    span_id  BLOB NOT NULL,
    caller   INTEGER NOT NULL,
    callee   INTEGER NOT NULL,
    error    INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    PRIMARY KEY (start_ns, trace_no, span_id)
) WITHOUT ROWID;
CREATE TABLE edge_hours (
    hour     INTEGER NOT NULL,
    caller   INTEGER NOT NULL,
    callee   INTEGER NOT NULL,
    calls    INTEGER NOT NULL,
    errors   INTEGER NOT NULL,
    PRIMARY KEY (hour, caller, callee)
) WITHOUT ROWID;
CREATE TABLE logs (
    id       INTEGER PRIMARY KEY,
    time_ns  INTEGER NOT NULL,
    resource INTEGER NOT NULL,
    level    INTEGER NOT NULL,
    severity INTEGER NOT NULL,
    trace_id BLOB,
    body     TEXT NOT NULL,
    rest     BLOB NOT NULL,
    span_id  BLOB,
    doc_id   BLOB
);
CREATE UNIQUE INDEX logs_by_time ON logs (time_ns, doc_id);
CREATE INDEX logs_by_span ON logs (span_id, trace_id, time_ns) WHERE span_id IS NOT NULL;
CREATE INDEX logs_by_trace ON logs (trace_id) WHERE trace_id IS NOT NULL;
CREATE TABLE log_blocks (
    block    INTEGER PRIMARY KEY,
    max_time INTEGER NOT NULL
);
CREATE VIRTUAL TABLE logs_text USING fts5 (
    body, content = '', tokenize = 'trigram', detail = 'none', columnsize = 0
);
CREATE TABLE heartbeats (
    doc_id   TEXT PRIMARY KEY,
    time_ns  INTEGER NOT NULL,
    doc      TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// The attribute index of a partition: per (key, value), the trace numbers holding it, as
/// chunks of delta-coded varints (see `postings.rs`). Layout 5; before, `attrs` held one row
/// per (key, value, trace number).
pub const POSTINGS: &str = r#"
CREATE TABLE IF NOT EXISTS postings (
    key   INTEGER NOT NULL,
    value ANY NOT NULL,
    chunk INTEGER NOT NULL,
    list  BLOB NOT NULL,
    PRIMARY KEY (key, value, chunk)
) WITHOUT ROWID;
"#;

/// The logs of a closed day moved into packs (see `packs.rs`; layout 5): the packs with
/// their time range and record count (indexed by range: a search reads the ranges without
/// the packs), a trigram index of each pack's text (its bodies, one per line), and the packs
/// each trace and span id (as a 32-bit key) appears in.
pub const LOG_PACKS: &str = r#"
CREATE TABLE IF NOT EXISTS log_packs (
    pack     INTEGER PRIMARY KEY,
    min_time INTEGER NOT NULL,
    max_time INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    data     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_packs_by_time ON log_packs (max_time, min_time);
CREATE VIRTUAL TABLE IF NOT EXISTS log_packs_text USING fts5 (
    body, content = '', tokenize = 'trigram', detail = 'none', columnsize = 0
);
CREATE TABLE IF NOT EXISTS log_pack_ids (
    key  INTEGER NOT NULL,
    pack INTEGER NOT NULL,
    PRIMARY KEY (key, pack)
) WITHOUT ROWID;
"#;

/// Turns a partition of layout 2 into layout 3 (the span id column is filled afterwards).
pub const PARTITION_2_TO_3: &str = r#"
ALTER TABLE logs ADD COLUMN span_id BLOB;
"#;

/// The index of the traces marked open (layout 4).
pub const PARTITION_4_INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS traces_open ON traces (start_ns) WHERE open = 1;
"#;

/// Indexes the span id column once it is filled.
pub const PARTITION_3_INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS logs_by_span ON logs (span_id, trace_id, time_ns) WHERE span_id IS NOT NULL;
"#;

/// The UTC day (days since the Unix epoch) of a time in ns.
pub fn day_of(t: u64) -> i64 {
    (t / DAY_NS) as i64
}

/// `YYYY-MM-DD` of a day number (proleptic Gregorian, UTC).
pub fn day_name(day: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day number of a `YYYY-MM-DD` name; `None` for anything else.
pub fn parse_day(name: &str) -> Option<i64> {
    let b = name.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = name[0..4].parse().ok()?;
    let m: i64 = name[5..7].parse().ok()?;
    let d: i64 = name[8..10].parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let day = era * 146_097 + doe - 719_468;
    (day_name(day) == name).then_some(day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_named_and_parsed_back() {
        assert_eq!(day_name(0), "1970-01-01");
        assert_eq!(day_name(day_of(1_736_935_200_000_000_000)), "2025-01-15");
        for day in [0, 59, 60, 365, 11_016, 20_000, 20_422] {
            assert_eq!(parse_day(&day_name(day)), Some(day));
        }
        assert_eq!(parse_day("2025-02-30"), None);
        assert_eq!(parse_day("dlog.sqlite3"), None);
    }
}
