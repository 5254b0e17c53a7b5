//! The test client's engine: health checks, load at a rate (open loop) or a concurrency
//! (closed loop) over a weighted mix of endpoints, and the report.
//!
//! At a rate, request `i` is scheduled at `start + i / rate` and leaves then whether or not
//! earlier ones returned (up to `max_in_flight` outstanding; past it, when one returns), and
//! its latency counts from that scheduled time, not from when it actually left: a slow server
//! or a full in-flight limit shows up as latency instead of quietly lowering the send rate
//! (coordinated omission).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distributed_logger::http::RequestBuilderExt;
use hdrhistogram::Histogram;
use tokio::time::Instant;
use tracing::Instrument;

/// One endpoint of the mix.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The service it belongs to (the table's first column and the client span's peer).
    pub service: String,
    /// Full URL, `http://host:port/path`.
    pub url: String,
    /// Relative share of the requests.
    pub weight: u32,
}

impl Endpoint {
    /// Parses `SERVICE=URL[*WEIGHT]`, e.g. `service-a=http://127.0.0.1:5000/work*8`.
    pub fn parse(spec: &str) -> Result<Endpoint, String> {
        let (service, rest) = spec
            .split_once('=')
            .ok_or_else(|| format!("`{spec}` is not SERVICE=URL[*WEIGHT]"))?;
        let (url, weight) = match rest.rsplit_once('*') {
            Some((url, w)) => (
                url,
                w.parse::<u32>()
                    .map_err(|_| format!("`{spec}`: weight `{w}` is not a whole number"))?,
            ),
            None => (rest, 1),
        };
        if !url.starts_with("http://") {
            return Err(format!("`{spec}`: `{url}` is not an http:// URL"));
        }
        if service.is_empty() || weight == 0 {
            return Err(format!(
                "`{spec}`: needs a service name and a weight above 0"
            ));
        }
        Ok(Endpoint {
            service: service.to_string(),
            url: url.to_string(),
            weight,
        })
    }

    /// `/path` of the URL, for the table.
    pub fn path(&self) -> &str {
        let after_scheme = self.url.trim_start_matches("http://");
        after_scheme
            .find('/')
            .map(|i| &after_scheme[i..])
            .unwrap_or("/")
    }
}

/// How many requests, how fast.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Open loop: this many requests per second, on schedule.
    Rate(f64),
    /// Closed loop: this many requests outstanding, each sent when one returns.
    Concurrency(usize),
}

/// A load run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// The mix.
    pub endpoints: Vec<Endpoint>,
    /// Rate or concurrency.
    pub pace: Pace,
    /// Stop after this many requests (with `duration`, whichever comes first).
    pub requests: Option<u64>,
    /// Stop scheduling after this long.
    pub duration: Option<Duration>,
    /// Open loop: most requests outstanding at once. A request scheduled while this many are
    /// outstanding waits for one to return, and the wait counts in its latency.
    pub max_in_flight: usize,
    /// Timeout of one request.
    pub timeout: Duration,
}

/// What one request came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Index into the plan's endpoints.
    pub endpoint: usize,
    /// HTTP status, or none when no answer came (connection refused, timeout).
    pub status: Option<u16>,
    /// From the scheduled send time (open loop) or the send (closed loop) to the answer.
    pub latency: Duration,
    /// The request's trace id, when the client has telemetry.
    pub trace_id: Option<String>,
    /// When it actually left, relative to the start of the run.
    pub sent_at: Duration,
}

impl Outcome {
    /// A 2xx answer.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// How many of the slowest requests a report keeps (and shows).
pub const SLOWEST_KEPT: usize = 5;
/// How many failed requests a report keeps (and shows).
pub const FAILED_KEPT: usize = 10;

/// What a run observed, in bounded memory whatever its length: per endpoint a count and a
/// latency histogram, the slowest requests and the first failed ones.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The plan's endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Per endpoint (same order): requests, 2xx answers, latency histogram in µs.
    per_endpoint: Vec<(u64, u64, Histogram<u64>)>,
    /// The slowest requests, slowest first.
    slowest: Vec<Outcome>,
    /// The first failed requests to complete.
    failed: Vec<Outcome>,
    /// Requests completed.
    pub requests: u64,
    /// Requests not answered 2xx.
    pub failures: u64,
    /// When the last request left, from the start of the run.
    pub last_sent: Duration,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl LoadReport {
    /// An empty report over `endpoints`.
    pub fn new(endpoints: Vec<Endpoint>) -> LoadReport {
        LoadReport {
            per_endpoint: endpoints.iter().map(|_| (0, 0, new_histogram())).collect(),
            endpoints,
            slowest: Vec::new(),
            failed: Vec::new(),
            requests: 0,
            failures: 0,
            last_sent: Duration::ZERO,
            elapsed: Duration::ZERO,
        }
    }

    /// Counts one finished request.
    pub fn record(&mut self, o: Outcome) {
        let Some(stats) = self.per_endpoint.get_mut(o.endpoint) else {
            return;
        };
        stats.0 += 1;
        stats.1 += u64::from(o.ok());
        let _ = stats
            .2
            .record(o.latency.as_micros().clamp(1, u128::from(MAX_MICROS)) as u64);
        self.requests += 1;
        self.last_sent = self.last_sent.max(o.sent_at);
        if !o.ok() {
            self.failures += 1;
            if self.failed.len() < FAILED_KEPT {
                self.failed.push(o.clone());
            }
        }
        if self.slowest.len() < SLOWEST_KEPT
            || self.slowest.last().is_some_and(|s| o.latency > s.latency)
        {
            let at = self.slowest.partition_point(|s| s.latency >= o.latency);
            self.slowest.insert(at, o);
            self.slowest.truncate(SLOWEST_KEPT);
        }
    }
}

/// The `/health` of each (name, base URL) that did not answer 200, with why. All are
/// checked at once.
pub async fn check_health(
    targets: &[(String, String)],
    timeout: Duration,
) -> Vec<(String, String)> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap_or_default();
    let mut checks = tokio::task::JoinSet::new();
    for (order, (name, base)) in targets.iter().cloned().enumerate() {
        let client = client.clone();
        checks.spawn(async move {
            let url = format!("{}/health", base.trim_end_matches('/'));
            let problem = match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("{url} answered {}", r.status())),
                Err(e) => Some(format!("{url}: {}", error_chain(&e))),
            };
            (order, problem.map(|p| (name, p)))
        });
    }
    let mut down: Vec<(usize, (String, String))> = Vec::new();
    while let Some(Ok((order, problem))) = checks.join_next().await {
        down.extend(problem.map(|p| (order, p)));
    }
    down.sort_by_key(|(order, _)| *order);
    down.into_iter().map(|(_, p)| p).collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// The trace id of the current span's context, when telemetry is installed.
fn current_trace_id() -> Option<String> {
    let mut headers = http::HeaderMap::new();
    distributed_logger::propagation::inject_current_http(&mut headers);
    let traceparent = headers.get("traceparent")?.to_str().ok()?;
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32).then(|| id.to_string())
}

/// Picks endpoints by weight, deterministically spread (request `i` takes slot
/// `i mod total weight`), so that short runs still follow the mix.
fn endpoint_for(endpoints: &[Endpoint], i: u64) -> usize {
    let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
    let mut slot = i % total.max(1);
    for (index, e) in endpoints.iter().enumerate() {
        if slot < u64::from(e.weight) {
            return index;
        }
        slot -= u64::from(e.weight);
    }
    0
}

async fn one(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    index: usize,
    request: u64,
    latency_from: Instant,
    start: Instant,
) -> Outcome {
    let span = tracing::info_span!("client.request", request, endpoint = %endpoint.url);
    async {
        let trace_id = current_trace_id();
        let sent_at = start.elapsed();
        let result = client
            .get(&endpoint.url)
            .send_traced(&endpoint.service)
            .await;
        let status = match result {
            // The body is read so the latency covers the whole answer.
            Ok(r) => {
                let status = r.status().as_u16();
                let _ = r.bytes().await;
                Some(status)
            }
            Err(_) => None,
        };
        Outcome {
            endpoint: index,
            status,
            latency: latency_from.elapsed(),
            trace_id,
            sent_at,
        }
    }
    .instrument(span)
    .await
}

/// Runs the plan. `progress` is told of each finished request.
pub async fn run_load(
    plan: &LoadPlan,
    progress: impl Fn(&Outcome) + Send + Sync + 'static,
) -> LoadReport {
    let client = reqwest::Client::builder()
        .timeout(plan.timeout)
        .pool_max_idle_per_host(plan.max_in_flight.min(1024))
        .build()
        .unwrap_or_default();
    let report = Arc::new(Mutex::new(LoadReport::new(plan.endpoints.clone())));
    let progress = Arc::new(progress);
    let start = Instant::now();
    let deadline = plan.duration.map(|d| start + d);
    let limit = plan.requests.unwrap_or(u64::MAX);
    let record = {
        let report = Arc::clone(&report);
        move |o: Outcome| {
            progress(&o);
            report.lock().unwrap_or_else(|e| e.into_inner()).record(o);
        }
    };
    let record = Arc::new(record);
    match plan.pace {
        Pace::Rate(rate) => {
            let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let slots = Arc::new(tokio::sync::Semaphore::new(plan.max_in_flight.max(1)));
            let mut tasks = tokio::task::JoinSet::new();
            let mut i = 0u64;
            while i < limit {
                let scheduled = start + period.mul_f64(i as f64);
                if deadline.is_some_and(|d| scheduled >= d) {
                    break;
                }
                tokio::time::sleep_until(scheduled).await;
                // With `max_in_flight` outstanding, the request due now leaves when one returns,
                // and the wait is part of its latency (counted from `scheduled`). Waiting here,
                // not in a task of its own, bounds the tasks and memory of a long run.
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    break;
                };
                let index = endpoint_for(&plan.endpoints, i);
                let (client, endpoint, record) = (
                    client.clone(),
                    plan.endpoints[index].clone(),
                    Arc::clone(&record),
                );
                tasks.spawn(async move {
                    let _slot = slot;
                    record(one(&client, &endpoint, index, i, scheduled, start).await);
                });
                // Reap finished tasks as we go so that a long run holds only those in flight.
                while tasks.try_join_next().is_some() {}
                i += 1;
            }
            while tasks.join_next().await.is_some() {}
        }
        Pace::Concurrency(workers) => {
            let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..workers.max(1) {
                let (client, endpoints, record, next) = (
                    client.clone(),
                    plan.endpoints.clone(),
                    Arc::clone(&record),
                    Arc::clone(&next),
                );
                tasks.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
                            return;
                        }
                        let index = endpoint_for(&endpoints, i);
                        let sent = Instant::now();
                        record(one(&client, &endpoints[index], index, i, sent, start).await);
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let mut report = report.lock().unwrap_or_else(|e| e.into_inner()).clone();
    report.elapsed = start.elapsed();
    report
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Service.
    pub service: String,
    /// URL path.
    pub endpoint: String,
    /// Requests.
    pub requests: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Latency percentiles, ms: p50, p95, p99, max.
    pub p50_ms: f64,
    /// p95, ms.
    pub p95_ms: f64,
    /// p99, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
}

impl LoadReport {
    /// One row per endpoint of the mix that got requests, in the mix's order, then the total.
    pub fn rows(&self) -> Vec<Row> {
        let row = |service: String,
                   endpoint: String,
                   (requests, ok, h): &(u64, u64, Histogram<u64>)| Row {
            service,
            endpoint,
            requests: *requests,
            ok: *ok,
            p50_ms: h.value_at_quantile(0.50) as f64 / 1000.0,
            p95_ms: h.value_at_quantile(0.95) as f64 / 1000.0,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            max_ms: h.max() as f64 / 1000.0,
        };
        let mut total = (0u64, 0u64, new_histogram());
        let mut rows = Vec::new();
        for (e, stats) in self.endpoints.iter().zip(&self.per_endpoint) {
            if stats.0 == 0 {
                continue;
            }
            total.0 += stats.0;
            total.1 += stats.1;
            let _ = total.2.add(&stats.2);
            rows.push(row(e.service.clone(), e.path().to_string(), stats));
        }
        if rows.len() > 1 {
            rows.push(row("all".into(), String::new(), &total));
        }
        rows
    }

    /// The slowest requests (at most [`SLOWEST_KEPT`]), slowest first.
    pub fn slowest(&self) -> &[Outcome] {
        &self.slowest
    }

    /// The first failed requests (at most [`FAILED_KEPT`]), in the order they were sent.
    pub fn failed(&self) -> Vec<&Outcome> {
        let mut failed: Vec<&Outcome> = self.failed.iter().collect();
        failed.sort_by_key(|o| o.sent_at);
        failed
    }

    /// The table and the trace ids of the slowest and failed requests, as text. Trace ids
    /// become `VIEWER/trace/<id>` links when a viewer URL is given.
    pub fn render(&self, viewer: Option<&str>) -> String {
        let mut out = String::new();
        let rows = self.rows();
        let svc_w = rows
            .iter()
            .map(|r| r.service.len())
            .max()
            .unwrap_or(0)
            .max(7);
        let ep_w = rows
            .iter()
            .map(|r| r.endpoint.len())
            .max()
            .unwrap_or(0)
            .max(8);
        let _ = writeln!(
            out,
            "{:<svc_w$}  {:<ep_w$}  {:>8}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}",
            "service", "endpoint", "requests", "success", "p50", "p95", "p99", "max"
        );
        for r in &rows {
            let success = if r.requests == 0 {
                0.0
            } else {
                100.0 * r.ok as f64 / r.requests as f64
            };
            let _ = writeln!(
                out,
                "{:<svc_w$}  {:<ep_w$}  {:>8}  {:>7.1}%  {:>9}  {:>9}  {:>9}  {:>9}",
                printable(&r.service),
                printable(&r.endpoint),
                r.requests,
                success,
                ms(r.p50_ms),
                ms(r.p95_ms),
                ms(r.p99_ms),
                ms(r.max_ms),
            );
        }
        let sent = self.requests;
        let window = self.last_sent.as_secs_f64();
        let _ = writeln!(
            out,
            "{sent} requests sent over {window:.1} s ({:.1}/s); the last answer came after {:.1} s",
            sent.saturating_sub(1) as f64 / window.max(0.001),
            self.elapsed.as_secs_f64(),
        );
        let link = |o: &Outcome| match (&o.trace_id, viewer) {
            (Some(id), Some(v)) => format!("{}/trace/{id}", v.trim_end_matches('/')),
            (Some(id), None) => format!("trace {id}"),
            (None, _) => "(no trace id: telemetry off)".to_string(),
        };
        let describe = |o: &Outcome| {
            let e = &self.endpoints[o.endpoint];
            let status = o
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "no answer".into());
            format!(
                "  {:>9}  {:<6} {} {}  {}",
                ms(o.latency.as_secs_f64() * 1000.0),
                status,
                printable(&e.service),
                printable(e.path()),
                link(o)
            )
        };
        let slowest = self.slowest();
        if !slowest.is_empty() {
            let _ = writeln!(out, "slowest requests:");
            for o in slowest {
                let _ = writeln!(out, "{}", describe(o));
            }
        }
        let failed = self.failed();
        if !failed.is_empty() {
            let _ = writeln!(
                out,
                "failed requests ({} of {} shown):",
                failed.len(),
                self.failures
            );
            for o in failed {
                let _ = writeln!(out, "{}", describe(o));
            }
        }
        out
    }
}

/// Latency cap of the histograms: one hour, in µs.
const MAX_MICROS: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    // 3 significant digits from 1 µs to an hour; bounded at a few hundred KiB.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

fn ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else {
        format!("{v:.1} ms")
    }
}

/// Names and paths come from the command line, but they reach a terminal: no control
/// characters.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_weights_and_bad_ones_say_why() {
        let e = Endpoint::parse("service-a=http://127.0.0.1:5000/work*8").unwrap();
        assert_eq!(
            (e.service.as_str(), e.url.as_str(), e.weight, e.path()),
            ("service-a", "http://127.0.0.1:5000/work", 8, "/work")
        );
        assert_eq!(Endpoint::parse("b=http://h:1/x").unwrap().weight, 1);
        assert!(Endpoint::parse("http://h:1/x")
            .unwrap_err()
            .contains("SERVICE=URL"));
        assert!(Endpoint::parse("b=http://h:1/x*z")
            .unwrap_err()
            .contains("weight"));
        assert!(Endpoint::parse("b=ftp://h")
            .unwrap_err()
            .contains("http://"));
    }

    #[test]
    fn the_mix_follows_the_weights() {
        let endpoints: Vec<Endpoint> = ["a=http://h/a*8", "b=http://h/b*1", "c=http://h/c*1"]
            .iter()
            .map(|s| Endpoint::parse(s).unwrap())
            .collect();
        let mut counts = [0; 3];
        for i in 0..1000 {
            counts[endpoint_for(&endpoints, i)] += 1;
        }
        assert_eq!(counts, [800, 100, 100]);
    }

    #[test]
    fn the_table_has_a_row_per_endpoint_with_percentiles_and_links_to_traces() {
        let endpoints = vec![
            Endpoint::parse("service-a=http://h:1/work").unwrap(),
            Endpoint::parse("service-b=http://h:2/work").unwrap(),
        ];
        let mut report = LoadReport::new(endpoints);
        for i in 0..100u64 {
            report.record(Outcome {
                endpoint: 0,
                status: Some(if i < 10 { 500 } else { 200 }),
                latency: Duration::from_millis(i + 1),
                trace_id: Some(format!("{i:032x}")),
                sent_at: Duration::from_millis(i),
            });
        }
        report.record(Outcome {
            endpoint: 1,
            status: None,
            latency: Duration::from_millis(7),
            trace_id: None,
            sent_at: Duration::from_millis(5),
        });
        report.elapsed = Duration::from_secs(1);
        assert_eq!((report.requests, report.failures), (101, 11));
        let slowest: Vec<u64> = report
            .slowest()
            .iter()
            .map(|o| o.latency.as_millis() as u64)
            .collect();
        assert_eq!(slowest, [100, 99, 98, 97, 96]);
        let rows = report.rows();
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].requests, rows[0].ok), (100, 90));
        assert!((rows[0].p50_ms - 50.0).abs() < 0.5, "{}", rows[0].p50_ms);
        assert!((rows[0].p99_ms - 99.0).abs() < 0.5, "{}", rows[0].p99_ms);
        assert_eq!((rows[1].requests, rows[1].ok), (1, 0));
        assert_eq!((rows[2].service.as_str(), rows[2].requests), ("all", 101));
        let text = report.render(Some("http://127.0.0.1:16686/"));
        let slowest = format!("http://127.0.0.1:16686/trace/{:032x}", 99);
        assert!(text.contains(&slowest), "{text}");
        assert!(text.contains("failed requests (10 of 11 shown)"), "{text}");
        assert!(text.contains(&format!("/trace/{:032x}", 0)), "{text}");
        assert!(report.render(None).contains(&format!("trace {:032x}", 99)));
    }
}
