//! dlog's own API under `/api/v1/`: trace search summaries, paged trace windows, log search
//! and live tail (Server-Sent Events), alerts and incidents, instance status, and declared
//! versus observed dependencies. Times are µs since the epoch (exact in JavaScript numbers).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dlog_core::model::{LogEntry, SpanRecord};
use dlog_storage::{
    AlertDoc, AlertQuery, LogCursor, LogOrder, LogQuery, SpanCursor, StatusQuery, TimeRange,
};
use futures::Stream;
use serde_json::{json, Value};

use crate::jaeger::{page_within, search_range, trace_query};
use crate::params::{span_id, trace_id, ApiError, Params};
use crate::AppState;

/// Default spans per trace page.
pub const DEFAULT_PAGE: usize = 2000;
/// Most spans per trace page.
pub const MAX_PAGE: usize = 10_000;
/// Default logs per search.
pub const DEFAULT_LOGS: usize = 200;
/// Most logs per search.
pub const MAX_LOGS: usize = 2000;
/// Most logs one live-tail poll sends.
pub const TAIL_BATCH: usize = 500;
/// Most alerts per listing.
pub const MAX_ALERTS: usize = 1000;

fn us(ns: u64) -> u64 {
    ns / 1000
}

/// A span as dlog's UI shows it.
pub fn span_json(s: &SpanRecord) -> Value {
    json!({
        "trace_id": s.trace_id,
        "span_id": s.span_id,
        "parent_span_id": s.parent_span_id,
        "name": s.name,
        "kind": s.kind.as_str(),
        "start_us": us(s.start_unix_nano),
        "duration_us": s.duration_nanos() as f64 / 1000.0,
        "status": s.status,
        "status_message": s.status_message,
        "error": s.is_error(),
        "service": s.service.name,
        "resource": {
            "service.version": s.service.version,
            "service.instance.id": s.service.instance_id,
            "service.dependencies": s.service.dependencies,
            "attributes": s.service.attributes,
        },
        "scope": s.scope,
        "attributes": s.attributes,
        "events": s.events.iter().map(|e| json!({
            "name": e.name,
            "time_us": us(e.time_unix_nano),
            "attributes": e.attributes,
        })).collect::<Vec<_>>(),
        "links": s.links,
    })
}

/// A log record as dlog's UI shows it.
pub fn log_json(l: &LogEntry) -> Value {
    json!({
        "id": l.doc_id(),
        "time_us": us(l.time_unix_nano),
        "level": l.level,
        "severity_number": l.severity_number,
        "body": l.body,
        "trace_id": l.trace_id,
        "span_id": l.span_id,
        "event_name": l.event_name,
        "service": l.service.name,
        "instance": l.service.instance_id,
        "attributes": l.attributes,
    })
}

/// `GET /api/v1/traces?service=&operation=&attr=k=v&tags=&minDuration=&maxDuration=&start=&end=&lookback=&limit=`:
/// trace summaries. Unlike Jaeger's API a service is optional, and the durations are the
/// whole trace's.
pub async fn find_traces(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(raw.as_deref())?;
    let query = trace_query(&params)?;
    let found = state.store.find_traces(&query).await?;
    let traces: Vec<Value> = found
        .iter()
        .map(|t| {
            json!({
                "trace_id": t.trace_id,
                "start_us": us(t.start_unix_nano),
                "duration_us": t.duration_nanos as f64 / 1000.0,
                "root_service": t.root_service,
                "root_operation": t.root_operation,
                "span_count": t.span_count,
                "error_count": t.error_count,
                "services": t.services,
            })
        })
        .collect();
    Ok(Json(json!({"traces": traces, "limit": query.limit})))
}

/// `GET /api/v1/traces/{id}/spans?after_start_ns=&after_span=&limit=`: one window of a
/// trace's spans in start order, read as a page from the store, and the cursor of the next.
/// A window whose spans' JSON would pass `max_answer_bytes` ends early (after at least one
/// span), and its cursor continues from there.
/// With `around=<span id>` instead: the window of `limit` spans centred on that span (for a
/// deep link into a huge trace), without a cursor.
pub async fn trace_spans(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let id = trace_id(&id)?;
    let params = Params::parse(raw.as_deref())?;
    let limit = params.limit("limit", DEFAULT_PAGE, MAX_PAGE)?;
    let after = match (params.get("after_start_ns"), params.get("after_span")) {
        (None, None) => None,
        (Some(start), Some(span)) => Some(SpanCursor {
            start_unix_nano: start
                .parse()
                .map_err(|e| ApiError::bad_param("after_start_ns", e))?,
            span_id: span_id("after_span", span)?,
        }),
        (None, Some(_)) => {
            return Err(ApiError::bad_param(
                "after_start_ns",
                "required with 'after_span'",
            ))
        }
        (Some(_), None) => {
            return Err(ApiError::bad_param(
                "after_span",
                "required with 'after_start_ns'",
            ))
        }
    };
    if let Some(around) = params.get("around") {
        if after.is_some() {
            return Err(ApiError::bad_param(
                "around",
                "cannot be combined with 'after_span'",
            ));
        }
        let around = span_id("around", around)?;
        return window_around(&state, &id, &around, limit).await;
    }
    // Pages sized to the bytes left, so that huge spans are not all read before the bound
    // is checked.
    let max_bytes = state
        .options
        .max_answer_bytes
        .saturating_sub(WINDOW_OVERHEAD_BYTES);
    let mut budget = max_bytes;
    let mut window = Vec::new();
    let mut cursor = after;
    let more = loop {
        let want = page_within(
            budget,
            max_bytes - budget,
            window.len(),
            limit - window.len(),
        );
        let spans = state
            .store
            .get_trace_page(&id, cursor.as_ref(), want)
            .await?;
        let mut cut = false;
        for s in &spans {
            let json = span_json(s);
            let cost = crate::jaeger::json_len(&json) + 1;
            if cost > budget && !window.is_empty() {
                cut = true;
                break;
            }
            budget = budget.saturating_sub(cost);
            window.push(json);
            cursor = Some(SpanCursor {
                start_unix_nano: s.start_unix_nano,
                span_id: s.span_id.clone(),
            });
        }
        if cut || window.len() == limit {
            break true;
        }
        if spans.len() < want {
            break false;
        }
    };
    // The cursor carries ns as a string: a JavaScript number cannot hold them exactly.
    let next = more
        .then_some(cursor)
        .flatten()
        .map(|c| json!({"after_start_ns": c.start_unix_nano.to_string(), "after_span": c.span_id}));
    Ok(Json(json!({
        "trace_id": id,
        "spans": window,
        "next": next,
    })))
}

/// Bytes a trace window's JSON takes besides its spans (trace id, cursor, separators).
const WINDOW_OVERHEAD_BYTES: usize = 256;

/// Most spans a window search reads through before giving up on finding the span.
pub const MAX_WINDOW_SCAN: usize = 2_000_000;

/// The window of up to `limit` spans centred on span `around`, found by paging through the
/// trace in start order while keeping only the last `limit / 2` spans read: the store is read
/// a page at a time and the viewer's memory stays bounded whatever the trace's size.
async fn window_around(
    state: &AppState,
    trace: &str,
    around: &str,
    limit: usize,
) -> Result<Json<Value>, ApiError> {
    // Within the answer byte bound too: at most half of it before the span, the rest after.
    let max_bytes = state
        .options
        .max_answer_bytes
        .saturating_sub(WINDOW_OVERHEAD_BYTES);
    let before_max = limit / 2;
    let mut before: std::collections::VecDeque<(Value, usize)> = Default::default();
    let mut before_bytes = 0usize;
    let mut window: Vec<Value> = Vec::new();
    let mut window_bytes = 0usize;
    let mut cursor: Option<SpanCursor> = None;
    let (mut scanned, mut scanned_bytes) = (0usize, 0usize);
    let mut found = false;
    let mut full = false;
    loop {
        let page = page_within(max_bytes, scanned_bytes, scanned, MAX_PAGE);
        let spans = state
            .store
            .get_trace_page(trace, cursor.as_ref(), page)
            .await?;
        let last = spans.last().map(|s| SpanCursor {
            start_unix_nano: s.start_unix_nano,
            span_id: s.span_id.clone(),
        });
        let done = spans.len() < page;
        scanned += spans.len();
        for s in spans {
            let json = span_json(&s);
            let cost = crate::jaeger::json_len(&json) + 1;
            scanned_bytes += cost;
            if found {
                if window.len() >= limit || window_bytes + cost > max_bytes {
                    full = true;
                    break;
                }
                window_bytes += cost;
                window.push(json);
            } else if s.span_id == around {
                found = true;
                window_bytes = before_bytes + cost;
                window.extend(before.drain(..).map(|(j, _)| j));
                window.push(json);
            } else {
                before_bytes += cost;
                before.push_back((json, cost));
                while before.len() > before_max || before_bytes > max_bytes / 2 {
                    let Some((_, c)) = before.pop_front() else {
                        break;
                    };
                    before_bytes -= c;
                }
            }
        }
        if done || full || (found && window.len() >= limit) {
            break;
        }
        if scanned >= MAX_WINDOW_SCAN {
            return Err(ApiError::bad_param(
                "around",
                format!("span not found in the first {MAX_WINDOW_SCAN} spans of the trace"),
            ));
        }
        cursor = last;
    }
    if !found {
        return Err(ApiError::not_found(format!(
            "span {around} is not in trace {trace}"
        )));
    }
    Ok(Json(json!({
        "trace_id": trace,
        "spans": window,
        "next": null,
        "window_around": around,
    })))
}

fn log_query(params: &Params, default_range: bool) -> Result<LogQuery, ApiError> {
    let time = if default_range || params.get("start").is_some() || params.get("end").is_some() {
        search_range(params)?
    } else {
        TimeRange::default()
    };
    let trace = params.get("trace_id").map(trace_id).transpose()?;
    let span = params
        .get("span_id")
        .map(|s| span_id("span_id", s))
        .transpose()?;
    if span.is_some() && trace.is_none() {
        return Err(ApiError::bad_param("span_id", "needs 'trace_id' too"));
    }
    let level = params.get("level").map(|l| l.to_ascii_uppercase());
    Ok(LogQuery {
        text: params.string("text"),
        service: params.string("service"),
        level,
        trace_id: trace,
        span_id: span,
        time,
        limit: params.limit("limit", DEFAULT_LOGS, MAX_LOGS)?,
        ..LogQuery::default()
    })
}

/// Records a live tail remembers having sent past its settled position (those within the
/// grace of the clock, and those stamped ahead of it). Beyond, it forgets the oldest and
/// settles past them, so a record stored late among them is no longer caught.
pub const TAIL_REMEMBERED: usize = 50_000;

/// `GET /api/v1/logs?text=&service=&level=&trace_id=&span_id=&start=&end=&lookback=&limit=`:
/// newest first. With `span_id`, only the records emitted inside that span (the store
/// filters by span).
pub async fn search_logs(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(raw.as_deref())?;
    // A trace's logs are wanted whatever their age; otherwise Jaeger's default window.
    let query = log_query(&params, params.get("trace_id").is_none())?;
    let logs = state.store.search_logs(&query).await?;
    let logs: Vec<Value> = logs.iter().map(log_json).collect();
    Ok(Json(json!({"logs": logs, "limit": query.limit})))
}

/// `GET /api/v1/logs/tail?text=&service=&level=&trace_id=&span_id=&since=`: Server-Sent
/// Events, one `log` event per new record, oldest first. Every `tail_poll` interval the tail
/// reads forward from its position (time, then document id) in pages of [`TAIL_BATCH`] until
/// it has caught up, so a burst larger than a page is delivered whole, once, in order. The
/// position trails the clock by [`crate::ViewerOptions::tail_grace`]: each poll re-reads that
/// window and sends only what it had not, so a record stored up to the grace late still
/// arrives (once). Each event's id is the latest record sent; a reconnect carrying it as
/// `Last-Event-ID` resumes right after it. At most [`crate::ViewerOptions::max_tails`] tails
/// run at once; more are answered 503.
pub async fn tail_logs(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let params = match Params::parse(raw.as_deref()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let mut query = match log_query(&params, false) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let Ok(slot) = state.tail_slots.clone().try_acquire_owned() else {
        return ApiError {
            status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
            message: "too many live tails are open; close one and retry".into(),
        }
        .into_response();
    };
    query.limit = TAIL_BATCH;
    query.order = LogOrder::OldestFirst;
    // Start from a little before now so that a record answered just before the tail opened
    // is not missed.
    let since = match params.micros_as_nanos("since") {
        Ok(since) => {
            since.unwrap_or_else(|| dlog_storage::now_unix_nano().saturating_sub(2_000_000_000))
        }
        Err(e) => return e.into_response(),
    };
    // A reconnect resumes after the last record its stream carried. A `since` from the
    // future would hide every record until then. The empty id sorts before every record of
    // that time.
    let position = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_event_id)
        .unwrap_or(LogCursor {
            time_unix_nano: since,
            doc_id: String::new(),
        });
    let position = LogCursor {
        time_unix_nano: position.time_unix_nano.min(dlog_storage::now_unix_nano()),
        ..position
    };
    let poll = state.options.tail_poll;
    let stream = tail_stream(state, query, position, poll, slot);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn tail_stream(
    state: AppState,
    query: LogQuery,
    position: LogCursor,
    poll: Duration,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    struct Tail {
        state: AppState,
        query: LogQuery,
        /// Settled: every record up to it that was stored in time has been read. Each poll
        /// reads forward from here, so it trails the clock by the grace.
        position: LogCursor,
        /// Records after `position` already sent (the grace window, and records stamped
        /// ahead of the clock): a re-read skips them. At most [`TAIL_REMEMBERED`].
        sent: BTreeSet<LogCursor>,
        /// Where the next page of a catch-up starts (the last record of a full page).
        read_from: Option<LogCursor>,
        /// The last record read from ahead of the wall clock.
        ahead: Option<LogCursor>,
        /// The latest record sent: the event id, from which a reconnect resumes.
        last_sent: LogCursor,
        pending: std::collections::VecDeque<Event>,
        /// The last read filled a page: read on without waiting.
        behind: bool,
        /// Every record of this catch-up so far was read in one run from the position and
        /// is past the grace: the position follows it.
        settling: bool,
        first: bool,
        poll: Duration,
        grace: u64,
        _slot: tokio::sync::OwnedSemaphorePermit,
    }
    impl Tail {
        fn send(&mut self, l: &LogEntry, at: LogCursor) {
            if at > self.last_sent {
                self.last_sent = at;
            }
            self.pending.push_back(
                Event::default()
                    .event("log")
                    .id(event_id(&self.last_sent))
                    .data(log_json(l).to_string()),
            );
        }

        /// Past [`TAIL_REMEMBERED`], the oldest records up to the clock are forgotten and the
        /// position moves over them (the re-read window shrinks); records ahead of the clock
        /// are never settled, the latest of them are forgotten instead (and may come again).
        fn forget_over_cap(&mut self, now: u64) {
            while self.sent.len() > TAIL_REMEMBERED {
                let oldest_settles = self.sent.first().is_some_and(|c| c.time_unix_nano <= now);
                if oldest_settles {
                    if let Some(c) = self.sent.pop_first() {
                        self.position = self.position.clone().max(c);
                    }
                } else {
                    self.sent.pop_last();
                }
            }
        }
    }
    let grace = state.options.tail_grace.as_nanos().min(u64::MAX as u128) as u64;
    let tail = Tail {
        state,
        query,
        last_sent: position.clone(),
        position,
        sent: BTreeSet::new(),
        read_from: None,
        ahead: None,
        pending: Default::default(),
        behind: false,
        settling: false,
        first: true,
        poll,
        grace,
        _slot: slot,
    };
    let error_event = |e: dlog_storage::StoreError| {
        Event::default()
            .event("error")
            .data(json!({"msg": e.to_string()}).to_string())
    };
    futures::stream::unfold(tail, move |mut t| async move {
        loop {
            if let Some(event) = t.pending.pop_front() {
                return Some((Ok(event), t));
            }
            if t.state.closing.is_cancelled() {
                return None;
            }
            if !t.first && !t.behind {
                tokio::select! {
                    () = tokio::time::sleep(t.poll) => {}
                    () = t.state.closing.cancelled() => return None,
                }
            }
            t.first = false;
            // Forward from the position (or the page a catch-up reached), up to the wall
            // clock: a record stamped ahead of it must not settle the position past every
            // record until its time. What lies within the grace of the clock is sent but
            // not settled, so that the next poll reads it again, with the records stored
            // late among it.
            let now = dlog_storage::now_unix_nano();
            let settle = now.saturating_sub(t.grace);
            let mut q = t.query.clone();
            if t.read_from.is_none() {
                t.settling = true;
            }
            q.after = Some(t.read_from.take().unwrap_or_else(|| t.position.clone()));
            q.time.end_unix_nano = Some(q.time.end_unix_nano.map_or(now, |e| e.min(now)));
            let found = match t.state.store.search_logs(&q).await {
                Ok(found) => found,
                Err(e) => {
                    t.behind = false;
                    return Some((Ok(error_event(e)), t));
                }
            };
            t.behind = found.len() >= TAIL_BATCH;
            for l in &found {
                let at = LogCursor::of(l);
                let was_sent = t.sent.contains(&at);
                if !was_sent {
                    t.send(l, at.clone());
                }
                // Read in one run from the position: the position may settle on it.
                if t.settling && at.time_unix_nano <= settle {
                    t.sent.remove(&at);
                    t.position = t.position.clone().max(at.clone());
                } else {
                    t.settling = false;
                    t.sent.insert(at.clone());
                }
                if t.behind {
                    t.read_from = Some(at);
                }
            }
            t.forget_over_cap(now);
            if t.behind {
                continue;
            }
            // Caught up: every record stored by now and stamped up to `settle` has been read,
            // matching or not, so the next poll starts there (a selective tail does not
            // re-scan everything since its last match).
            let floor = LogCursor {
                time_unix_nano: settle.saturating_add(1),
                doc_id: String::new(),
            };
            if floor > t.position {
                t.position = floor;
                t.sent = t.sent.split_off(&t.position);
            }
            // The records stamped ahead of the clock, each sent once, a page per poll from
            // the last one read.
            let mut q = t.query.clone();
            q.time.start_unix_nano = Some(
                q.time
                    .start_unix_nano
                    .unwrap_or(0)
                    .max(now.saturating_add(1)),
            );
            q.after = t.ahead.clone();
            let ahead = match t.state.store.search_logs(&q).await {
                Ok(found) => found,
                Err(e) => return Some((Ok(error_event(e)), t)),
            };
            for l in &ahead {
                let at = LogCursor::of(l);
                t.ahead = Some(at.clone());
                if t.sent.insert(at.clone()) {
                    t.send(l, at);
                }
            }
            t.forget_over_cap(now);
        }
    })
}

/// A live tail's event id: the latest record sent, `time.document-id`.
fn event_id(c: &LogCursor) -> String {
    format!("{}.{}", c.time_unix_nano, c.doc_id)
}

/// The position a reconnecting live tail resumes from (its `Last-Event-ID`).
fn parse_event_id(id: &str) -> Option<LogCursor> {
    let (time, doc_id) = id.split_once('.')?;
    let ok = doc_id.len() <= 128 && doc_id.bytes().all(|b| b.is_ascii_alphanumeric());
    Some(LogCursor {
        time_unix_nano: time.parse().ok()?,
        doc_id: doc_id.to_string(),
    })
    .filter(|_| ok)
}

fn alert_json(a: &AlertDoc) -> Value {
    json!({
        "id": a.id,
        "rule": a.rule,
        "severity": a.severity,
        "state": a.state,
        "service": a.service,
        "instance": a.instance,
        "summary": a.summary,
        "first_seen_us": us(a.first_seen_unix_nano),
        "last_seen_us": us(a.last_seen_unix_nano),
        "occurrences": a.occurrences,
        "example_trace_ids": a.example_trace_ids,
        "root_cause": a.root_cause,
        "incident_id": a.incident_id,
        "labels": a.labels,
    })
}

/// `GET /api/v1/alerts?service=&state=&limit=`: alerts newest first, and the incidents they
/// are grouped into (root cause, state, the alerts beneath).
pub async fn alerts(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(raw.as_deref())?;
    if let Some(s) = params.get("state") {
        if s != "firing" && s != "resolved" {
            return Err(ApiError::bad_param("state", "expecting firing or resolved"));
        }
    }
    let alerts = state
        .store
        .list_alerts(&AlertQuery {
            service: params.string("service"),
            state: params.string("state"),
            limit: params.limit("limit", 200, MAX_ALERTS)?,
        })
        .await?;
    let mut incidents: BTreeMap<&str, Vec<&AlertDoc>> = BTreeMap::new();
    for a in &alerts {
        if let Some(id) = a.incident_id.as_deref() {
            incidents.entry(id).or_default().push(a);
        }
    }
    let incidents: Vec<Value> = incidents
        .into_iter()
        .map(|(id, members)| {
            let firing = members.iter().any(|a| a.state == "firing");
            let root = members.iter().find_map(|a| a.root_cause.clone());
            let services: BTreeSet<&str> = members.iter().map(|a| a.service.as_str()).collect();
            json!({
                "id": id,
                "state": if firing { "firing" } else { "resolved" },
                "root_cause": root,
                    "services": services,
                "first_seen_us": members.iter().map(|a| us(a.first_seen_unix_nano)).min(),
                "last_seen_us": members.iter().map(|a| us(a.last_seen_unix_nano)).max(),
                "alert_ids": members.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            })
        })
        .collect();
    // Alerts still show when silences cannot be read; they are then not marked silenced.
    let (silences, acks) = crate::silences::load(&state).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e.message, "cannot read silences");
        Default::default()
    });
    let now = dlog_storage::now_unix_nano();
    let alerts_json: Vec<Value> = alerts
        .iter()
        .map(|a| {
            let mut v = alert_json(a);
            crate::silences::annotate(&mut v, a, &silences, &acks, now);
            v
        })
        .collect();
    Ok(Json(json!({
        "alerts": alerts_json,
        "incidents": incidents,
    })))
}

/// `GET /api/v1/status?service=`: UP / DOWN / SILENT per instance.
pub async fn status(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(raw.as_deref())?;
    let instances = state
        .store
        .service_status(&StatusQuery {
            service: params.string("service"),
            ..Default::default()
        })
        .await?;
    let instances: Vec<Value> = instances
        .iter()
        .map(|i| {
            json!({
                "service": i.entry.service,
                "instance_id": i.entry.instance_id,
                "version": i.entry.version,
                "status": i.status.as_str(),
                "last_heartbeat_us": us(i.entry.last_heartbeat_unix_nano),
                "interval_ms": i.entry.interval_ms,
                "dependencies": i.entry.dependencies,
            })
        })
        .collect();
    Ok(Json(json!({"instances": instances})))
}

/// `GET /api/v1/dependencies?start=&end=&lookback=`: every edge, observed (calls, errors,
/// error rate, calls per second over the window) or declared, marked with which it is; and
/// each service's status (the worst of its instances).
pub async fn dependencies(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(raw.as_deref())?;
    let mut range = search_range(&params)?;
    if params.get("lookback").is_none() && params.get("start").is_none() {
        let end = range.end_unix_nano.unwrap_or(0);
        range.start_unix_nano = Some(end.saturating_sub(3600 * 1_000_000_000));
    }
    let window_s =
        (range.end_unix_nano.unwrap_or(0) - range.start_unix_nano.unwrap_or(0)) as f64 / 1e9;
    let deps = state.store.dependencies(range).await?;
    let instances = state.store.service_status(&StatusQuery::default()).await?;
    let latency = edge_latency_sample(&state, range).await;
    let declared: BTreeSet<(&str, &str)> = deps
        .declared
        .iter()
        .map(|d| (d.service.as_str(), d.depends_on.as_str()))
        .collect();
    let mut edges = Vec::new();
    let mut observed = BTreeSet::new();
    for e in &deps.observed {
        observed.insert((e.caller.as_str(), e.callee.as_str()));
        let sample = latency
            .edges
            .get(&(e.caller.clone(), e.callee.clone()))
            .map(|d| p95(d));
        edges.push(json!({
            "p95_us": sample.map(|(p, _)| p),
            "p95_samples": sample.map(|(_, n)| n).unwrap_or(0),
            "caller": e.caller,
            "callee": e.callee,
            "calls": e.calls,
            "errors": e.errors,
            "error_rate": if e.calls == 0 { 0.0 } else { e.errors as f64 / e.calls as f64 },
            "rate_per_s": if window_s > 0.0 { e.calls as f64 / window_s } else { 0.0 },
            "observed": true,
            "declared": declared.contains(&(e.caller.as_str(), e.callee.as_str())),
        }));
    }
    for (caller, callee) in &declared {
        if !observed.contains(&(*caller, *callee)) {
            edges.push(json!({
                "caller": caller, "callee": callee, "calls": 0, "errors": 0,
                "error_rate": 0.0, "rate_per_s": 0.0, "observed": false, "declared": true,
                "p95_us": null, "p95_samples": 0,
            }));
        }
    }
    let mut services: BTreeMap<String, &'static str> = BTreeMap::new();
    // A service is UP when one of its instances is, SILENT when none is up but one went
    // quiet, DOWN when every instance said so.
    let rank = |s: &str| match s {
        "UP" => 3,
        "SILENT" => 2,
        "DOWN" => 1,
        _ => 0,
    };
    for (a, b) in declared.iter().chain(observed.iter()) {
        services.entry(a.to_string()).or_insert("UNKNOWN");
        services.entry(b.to_string()).or_insert("UNKNOWN");
    }
    for i in &instances {
        let status = i.status.as_str();
        let entry = services.entry(i.entry.service.clone()).or_insert(status);
        if rank(status) > rank(entry) {
            *entry = status;
        }
    }
    Ok(Json(json!({
        "window_s": window_s,
        "latency_sample": {"traces": latency.traces, "spans": latency.spans},
            "services": services.iter().map(|(name, status)| json!({"name": name, "status": status})).collect::<Vec<_>>(),
        "edges": edges,
    })))
}

/// Most traces read to estimate edge latency: the newest ones in the window.
pub const LATENCY_SAMPLE_TRACES: usize = 50;
/// Most spans read per sampled trace (its first ones by start).
pub const LATENCY_SAMPLE_SPANS_PER_TRACE: usize = 2_000;

/// Child span durations per caller → callee edge, from a bounded sample of traces.
#[derive(Default)]
struct LatencySample {
    traces: usize,
    spans: usize,
    edges: BTreeMap<(String, String), Vec<u64>>,
}

/// Reads the newest [`LATENCY_SAMPLE_TRACES`] traces of the window (those of at most
/// [`LATENCY_SAMPLE_SPANS_PER_TRACE`] spans, 8 reads at a time) and keeps, per edge
/// between two services, the durations of the callee's spans whose parent is the caller's.
/// The `Store` trait reports no edge latency, so this is an estimate; a store error leaves it
/// out rather than failing the map.
async fn edge_latency_sample(state: &AppState, time: dlog_storage::TimeRange) -> LatencySample {
    use futures::StreamExt;
    let mut sample = LatencySample::default();
    let traces = match state
        .store
        .find_traces(&dlog_storage::TraceQuery {
            time,
            limit: LATENCY_SAMPLE_TRACES,
            ..Default::default()
        })
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "edge latency: cannot sample traces");
            return sample;
        }
    };
    // Traces larger than a page are left out, so that the cost stays bounded by the sample
    // even where a backend reads a whole trace to answer a page.
    let traces = traces
        .into_iter()
        .filter(|t| t.span_count <= LATENCY_SAMPLE_SPANS_PER_TRACE);
    let mut pages = futures::stream::iter(traces.map(|t| {
        let store = state.store.clone();
        async move {
            store
                .get_trace_page(&t.trace_id, None, LATENCY_SAMPLE_SPANS_PER_TRACE)
                .await
        }
    }))
    .buffer_unordered(8);
    while let Some(page) = pages.next().await {
        let Ok(spans) = page else { continue };
        sample.traces += 1;
        sample.spans += spans.len();
        let service_of: std::collections::HashMap<&str, &str> = spans
            .iter()
            .map(|s| (s.span_id.as_str(), s.service.name.as_str()))
            .collect();
        for span in &spans {
            let Some(parent) = span.parent_span_id.as_deref() else {
                continue;
            };
            let Some(caller) = service_of.get(parent) else {
                continue;
            };
            if *caller != span.service.name {
                sample
                    .edges
                    .entry((caller.to_string(), span.service.name.clone()))
                    .or_default()
                    .push(span.duration_nanos() / 1_000);
            }
        }
    }
    sample
}

/// The 95th percentile (nearest rank) of durations in µs, and how many there were.
fn p95(durations: &[u64]) -> (u64, usize) {
    let mut d = durations.to_vec();
    d.sort_unstable();
    let rank = ((d.len() as f64) * 0.95).ceil() as usize;
    (d[rank.clamp(1, d.len()) - 1], d.len())
}

#[cfg(test)]
mod latency_tests {
    use super::p95;

    #[test]
    fn p95_is_the_nearest_rank() {
        let d: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(p95(&d), (95, 100));
        assert_eq!(p95(&[7]), (7, 1));
        assert_eq!(p95(&[1, 2]), (2, 2));
    }
}
