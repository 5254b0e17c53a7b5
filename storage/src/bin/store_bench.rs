//! The store's scale benchmark: loads N spans and N logs of the reference shapes spread over
//! seven days, then prints ingest rate, bytes per span and per log, and query latency p50/p99
//! over randomized parameters while a background writer keeps ingesting.
//!
//! ```text
//! cargo run --release -p dlog-storage --bin dlog-store-bench -- --spans 1000000 --logs 1000000
//! cargo run --release -p dlog-storage --bin dlog-store-bench -- --elasticsearch http://127.0.0.1:9200
//! ```
//!
//! Reference shapes: a trace has 10 spans over 20-50 services (30 here, two instances each)
//! and hundreds of operations (10 per service); a span has 6 attributes (3 of low
//! cardinality, 1 unique per trace); a resource has 5 attributes; a log has a 60-100 byte
//! body and 3 attributes, half of them carry a trace id.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use dlog_core::model::{LogEntry, ServiceInfo, SpanEvent, SpanKind, SpanRecord, StatusCode};
use dlog_storage::{Document, LogQuery, Store, StoreConfig, TimeRange, TraceQuery};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// As the binaries that run the store (`dlog`, `dlog-indexer`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Loads spans and logs into a store and measures ingest, size and queries")]
struct Args {
    /// Spans to load (10 per trace).
    #[arg(long, default_value_t = 10_000_000)]
    spans: u64,
    /// Logs to load.
    #[arg(long, default_value_t = 10_000_000)]
    logs: u64,
    /// Embedded store directory (a fresh temporary one when unset; it must be empty).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Benchmark Elasticsearch at this URL instead of the embedded store.
    #[arg(long)]
    elasticsearch: Option<String>,
    /// Documents per write.
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// Queries per kind.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Spans per second written in the background while queries run (0: none).
    #[arg(long, default_value_t = 10_000)]
    background_rate: u64,
    /// Keep the store directory afterwards.
    #[arg(long)]
    keep: bool,
}

const SPANS_PER_TRACE: u64 = 10;
const SERVICES: u64 = 30;
const OPS_PER_SERVICE: u64 = 10;
const DAY: u64 = 86_400_000_000_000;
const MS: u64 = 1_000_000;
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
const CODES: [i64; 5] = [200, 201, 204, 404, 500];
const REGIONS: [&str; 3] = ["eu-west-1", "us-east-1", "ap-south-1"];
const WORDS: [&str; 24] = [
    "request",
    "served",
    "cache",
    "miss",
    "hit",
    "user",
    "session",
    "checkout",
    "payment",
    "order",
    "inventory",
    "timeout",
    "retry",
    "upstream",
    "connection",
    "pool",
    "queue",
    "message",
    "handler",
    "completed",
    "started",
    "latency",
    "database",
    "query",
];

fn trace_id(k: u64) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&k.to_le_bytes()))
}

fn resource(svc: u64, instance: u64) -> ServiceInfo {
    ServiceInfo {
        name: format!("svc-{svc:02}"),
        version: Some(format!("1.{}.0", svc % 4)),
        instance_id: Some(format!("svc-{svc:02}-{instance}")),
        dependencies: vec![],
        attributes: BTreeMap::from([
            (
                "host.name".to_string(),
                json!(format!("node-{}", (svc * 2 + instance) % 17)),
            ),
            ("deployment.environment".to_string(), json!("production")),
            (
                "cloud.region".to_string(),
                json!(REGIONS[(svc % 3) as usize]),
            ),
        ]),
    }
}

/// Writes and empties a batch; returns the time the store's write took.
async fn timed_write(store: &dyn Store, docs: &mut Vec<Document>) -> anyhow::Result<Duration> {
    if docs.is_empty() {
        return Ok(Duration::ZERO);
    }
    let t = Instant::now();
    store.write(docs).await?;
    let took = t.elapsed();
    docs.clear();
    Ok(took)
}

/// The ingest rate over the whole load (making the records included) and over the store's
/// write calls alone (the store's own path).
fn print_ingest(what: &str, n: u64, total: Duration, writing: Duration) {
    if n == 0 {
        println!("ingest {what}: none");
        return;
    }
    println!(
        "ingest {what}: {:.0} {what}/s ({n} in {:.1} s); in the store's write calls alone \
         {:.0} {what}/s ({:.1} s)",
        n as f64 / total.as_secs_f64(),
        total.as_secs_f64(),
        n as f64 / writing.as_secs_f64(),
        writing.as_secs_f64()
    );
}

/// Trace `k`: 10 spans, starting at `start`.
fn trace(k: u64, start: u64, resources: &[ServiceInfo]) -> Vec<SpanRecord> {
    let mut rng = StdRng::seed_from_u64(k);
    let id = trace_id(k);
    let mut spans: Vec<SpanRecord> = Vec::with_capacity(SPANS_PER_TRACE as usize);
    let mut svc = rng.random_range(0..SERVICES);
    for i in 0..SPANS_PER_TRACE {
        let parent = if i == 0 {
            None
        } else {
            Some(rng.random_range(0..i) as usize)
        };
        if let Some(p) = parent {
            svc = if rng.random_bool(0.4) {
                rng.random_range(0..SERVICES)
            } else {
                spans[p].service.name[4..].parse().unwrap_or(0)
            };
        }
        let op = rng.random_range(0..OPS_PER_SERVICE);
        let s = start + i * rng.random_range(1..5) * MS;
        let dur = if i == 0 {
            rng.random_range(20..2000) * MS
        } else {
            rng.random_range(1..200) * MS
        };
        let error = rng.random_bool(0.02);
        let mut events = vec![];
        if error {
            events.push(SpanEvent {
                name: "exception".into(),
                time_unix_nano: s + dur / 2,
                attributes: BTreeMap::from([(
                    "exception.type".to_string(),
                    json!("UpstreamTimeout"),
                )]),
            });
        }
        spans.push(SpanRecord {
            trace_id: id.clone(),
            span_id: format!(
                "{:016x}",
                xxhash_rust::xxh3::xxh3_64(&(k * 16 + i).to_le_bytes())
            ),
            parent_span_id: parent.map(|p| spans[p].span_id.clone()),
            name: format!("op-{svc:02}-{op}"),
            kind: if i == 0 {
                SpanKind::Server
            } else {
                SpanKind::Internal
            },
            start_unix_nano: s,
            end_unix_nano: s + dur,
            status: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            status_message: if error {
                "upstream timed out".into()
            } else {
                String::new()
            },
            service: resources[(svc * 2 + rng.random_range(0..2)) as usize].clone(),
            scope: "bench".into(),
            attributes: BTreeMap::from([
                (
                    "http.method".to_string(),
                    json!(METHODS[rng.random_range(0..4)]),
                ),
                (
                    "http.status_code".to_string(),
                    json!(CODES[rng.random_range(0..5)]),
                ),
                ("region".to_string(), json!(REGIONS[rng.random_range(0..3)])),
                ("request.id".to_string(), json!(format!("req-{k}"))),
                (
                    "http.route".to_string(),
                    json!(format!("/api/v1/op{op}/items/{{id}}")),
                ),
                ("thread.id".to_string(), json!(rng.random_range(0..64))),
            ]),
            events,
            links: vec![],
        });
    }
    spans
}

/// Log `k` at `time`: a 60-100 byte body; one in 10,000 carries a rare token `rare{k}`.
fn log(k: u64, time: u64, resources: &[ServiceInfo], traces: u64) -> LogEntry {
    let mut rng = StdRng::seed_from_u64(k ^ 0x5eed_0000_0000);
    let mut body = String::with_capacity(100);
    let target = rng.random_range(60..=100);
    if k % 10_000 == 7 {
        body.push_str(&format!("rare{k} "));
    }
    while body.len() < target {
        if rng.random_bool(0.2) {
            body.push_str(&format!("{} ", rng.random_range(0..100_000)));
        } else {
            body.push_str(WORDS[rng.random_range(0..WORDS.len())]);
            body.push(' ');
        }
    }
    body.truncate(target);
    let traced = traces > 0 && rng.random_bool(0.5);
    let t = rng.random_range(0..traces.max(1));
    LogEntry {
        time_unix_nano: time,
        severity_number: 9,
        level: ["INFO", "INFO", "INFO", "WARN", "ERROR"][rng.random_range(0..5)].into(),
        body,
        trace_id: traced.then(|| trace_id(t)),
        span_id: traced.then(|| {
            format!(
                "{:016x}",
                xxhash_rust::xxh3::xxh3_64(&(t * 16).to_le_bytes())
            )
        }),
        event_name: None,
        service: resources[rng.random_range(0..resources.len())].clone(),
        attributes: BTreeMap::from([
            (
                "user.id".to_string(),
                json!(format!("u-{}", rng.random_range(0..10_000))),
            ),
            (
                "component".to_string(),
                json!(["http", "db", "cache", "queue"][rng.random_range(0..4)]),
            ),
            (
                "latency_ms".to_string(),
                json!(rng.random_range(0.0..500.0)),
            ),
        ]),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let resources: Vec<ServiceInfo> = (0..SERVICES)
        .flat_map(|s| (0..2).map(move |i| resource(s, i)))
        .collect();
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("dlog-store-bench-{}", std::process::id()));
            tmp
        }
    };
    let mut embedded = None;
    let store: Arc<dyn Store> = match &args.elasticsearch {
        Some(url) => {
            let config = StoreConfig::elasticsearch(url)
                .with_index_prefix(format!("bench{}", std::process::id()));
            Arc::new(dlog_storage::elastic::ElasticStore::connect(&config).await?)
        }
        None => {
            let store = Arc::new(dlog_storage::embedded::EmbeddedStore::open(&dir)?);
            embedded = Some(Arc::clone(&store));
            store
        }
    };
    println!(
        "backend {}; {} spans ({} traces), {} logs over 7 days; batches of {}",
        store.backend(),
        args.spans,
        args.spans / SPANS_PER_TRACE,
        args.logs,
        args.batch
    );
    let now = dlog_storage::now_unix_nano();
    let span_of_days = 7 * DAY - 3_600_000_000_000;
    let first = now - 7 * DAY + 1_800_000_000_000;
    let traces = args.spans / SPANS_PER_TRACE;

    // Ingest spans: traces in time order, as they would arrive. The time inside the store's
    // write calls is kept apart from the time spent making the records.
    let started = Instant::now();
    let mut writing = Duration::ZERO;
    let mut docs = Vec::with_capacity(args.batch);
    for k in 0..traces {
        let start = first + span_of_days / traces.max(1) * k;
        docs.extend(trace(k, start, &resources).into_iter().map(Document::Span));
        if docs.len() >= args.batch {
            writing += timed_write(store.as_ref(), &mut docs).await?;
        }
    }
    writing += timed_write(store.as_ref(), &mut docs).await?;
    print_ingest(
        "spans",
        traces * SPANS_PER_TRACE,
        started.elapsed(),
        writing,
    );
    let started = Instant::now();
    let mut writing = Duration::ZERO;
    for k in 0..args.logs {
        let time = first + span_of_days / args.logs.max(1) * k;
        docs.push(Document::Log(log(k, time, &resources, traces)));
        if docs.len() >= args.batch {
            writing += timed_write(store.as_ref(), &mut docs).await?;
        }
    }
    writing += timed_write(store.as_ref(), &mut docs).await?;
    print_ingest("logs", args.logs, started.elapsed(), writing);
    store.refresh().await?;

    let print_size = |store: Arc<dyn Store>, label: &'static str| {
        let dir = dir.clone();
        let embedded = args.elasticsearch.is_none();
        let (spans, logs) = (traces * SPANS_PER_TRACE, args.logs);
        async move {
            match store.usage().await {
                Ok(u) => println!(
                    "on disk {label}: {} bytes in {} partitions",
                    u.bytes_used,
                    u.partitions.len()
                ),
                Err(e) => println!("on disk {label}: not reported ({e})"),
            }
            if !embedded {
                return anyhow::Ok(());
            }
            let tables = dlog_storage::embedded::table_bytes(&dir)?;
            let side = |names: &[&str]| -> u64 {
                tables
                    .iter()
                    .filter(|(n, _)| names.iter().any(|p| n.starts_with(p)))
                    .map(|(_, b)| *b)
                    .sum()
            };
            let span_bytes = side(&[
                "spans",
                "traces",
                "postings",
                "edge",
                "sqlite_autoindex_traces",
            ]);
            let log_bytes = side(&["logs", "log_"]);
            let shared = tables.get("shared").copied().unwrap_or(0);
            for (name, bytes) in &tables {
                println!("  {name:<28} {bytes:>14} bytes");
            }
            println!(
                "bytes per span {label}: {:.1} (spans, summaries, attribute index, edges)",
                span_bytes as f64 / spans.max(1) as f64
            );
            println!(
                "bytes per log {label}: {:.1} (rows and packs, their time, trace and span \
                 indexes, trigram text indexes)",
                log_bytes as f64 / logs.max(1) as f64
            );
            println!("shared database: {shared} bytes");
            anyhow::Ok(())
        }
    };
    if let Some(embedded) = &embedded {
        print_size(Arc::clone(&store), "before packing").await?;
        // What the retention passes of `dlog up` and the indexer do every few minutes (at
        // most 4M records a pass): the logs of the days that ended more than an hour ago
        // move into packs, and the freed pages go back to the filesystem.
        let started = Instant::now();
        let moved = embedded
            .compact_closed_days(
                dlog_storage::now_unix_nano(),
                dlog_storage::embedded::COMPACT_SLICE,
                u64::MAX,
            )
            .await?;
        let took = started.elapsed().as_secs_f64();
        println!(
            "packing the closed days' logs: {moved} in {took:.1} s ({:.0} logs/s, space given \
             back included); {} logs stay rows (today's)",
            moved as f64 / took.max(1e-9),
            args.logs.saturating_sub(moved)
        );
        print_size(Arc::clone(&store), "after packing").await?;
    } else {
        print_size(Arc::clone(&store), "").await?;
    }

    // Background ingest while querying, at the given rate, of new traces at "now".
    let stop = Arc::new(AtomicBool::new(false));
    let background_spans = Arc::new(AtomicU64::new(0));
    let background = {
        let store = Arc::clone(&store);
        let stop = Arc::clone(&stop);
        let count = Arc::clone(&background_spans);
        let resources = resources.clone();
        let rate = args.background_rate;
        tokio::spawn(async move {
            if rate == 0 {
                return;
            }
            let per_tick = (rate / 10).max(SPANS_PER_TRACE) / SPANS_PER_TRACE;
            let mut k = 1u64 << 40;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let now = dlog_storage::now_unix_nano();
                let mut docs = Vec::new();
                for _ in 0..per_tick {
                    docs.extend(trace(k, now, &resources).into_iter().map(Document::Span));
                    k += 1;
                }
                if store.write(&docs).await.is_ok() {
                    count.fetch_add(docs.len() as u64, Ordering::Relaxed);
                }
            }
        })
    };

    let mut rng = StdRng::seed_from_u64(42);
    let q = args.queries;
    let mut report = Vec::new();
    let bg_started = Instant::now();
    macro_rules! measure {
        ($name:expr, $body:expr) => {{
            let mut times = Vec::with_capacity(q);
            let mut hits = 0usize;
            for _ in 0..q {
                let t = Instant::now();
                let n: usize = $body;
                times.push(t.elapsed());
                hits += n;
            }
            times.sort();
            report.push((
                $name,
                percentile(&times, 0.5),
                percentile(&times, 0.99),
                hits as f64 / q as f64,
            ));
        }};
    }
    measure!("trace by id", {
        let k = rng.random_range(0..traces.max(1));
        store.get_trace(&trace_id(k)).await?.len()
    });
    measure!("traces by service", {
        let svc = rng.random_range(0..SERVICES);
        store
            .find_traces(&TraceQuery {
                service: Some(format!("svc-{svc:02}")),
                limit: 20,
                ..Default::default()
            })
            .await?
            .len()
    });
    measure!("traces by attribute", {
        let mut attributes = BTreeMap::new();
        match rng.random_range(0..4) {
            0 => attributes.insert(
                "http.method".to_string(),
                METHODS[rng.random_range(0..4)].to_string(),
            ),
            1 => attributes.insert(
                "request.id".to_string(),
                format!("req-{}", rng.random_range(0..traces.max(1))),
            ),
            2 => attributes.insert("request.id".to_string(), "req-none".to_string()),
            _ => attributes.insert(
                "host.name".to_string(),
                format!("node-{}", rng.random_range(0..17)),
            ),
        };
        store
            .find_traces(&TraceQuery {
                attributes,
                limit: 20,
                ..Default::default()
            })
            .await?
            .len()
    });
    measure!("traces by duration", {
        let min = [100u64, 500, 1500][rng.random_range(0..3)];
        store
            .find_traces(&TraceQuery {
                service: Some(format!("svc-{:02}", rng.random_range(0..SERVICES))),
                min_duration: Some(Duration::from_millis(min)),
                max_duration: Some(Duration::from_millis(min * 2)),
                limit: 20,
                ..Default::default()
            })
            .await?
            .len()
    });
    measure!("log text, common term", {
        let word = WORDS[rng.random_range(0..WORDS.len())];
        store
            .search_logs(&LogQuery {
                text: Some(word.to_string()),
                limit: 20,
                ..Default::default()
            })
            .await?
            .len()
    });
    measure!("log text, rare term", {
        let text = if rng.random_bool(0.5) {
            let n = args.logs / 10_000;
            format!("rare{}", rng.random_range(0..n.max(1)) * 10_000 + 7)
        } else {
            format!("absent{}", rng.random_range(0..1_000_000))
        };
        store
            .search_logs(&LogQuery {
                text: Some(text),
                limit: 20,
                ..Default::default()
            })
            .await?
            .len()
    });
    measure!("dependencies over a day", {
        let day = first + rng.random_range(0..6) * DAY;
        store
            .dependencies(TimeRange::between(day, day + DAY))
            .await?
            .observed
            .len()
    });
    stop.store(true, Ordering::Relaxed);
    background.await?;
    let bg = background_spans.load(Ordering::Relaxed);
    println!(
        "queries ({q} each, randomized) with background ingest of {:.0} spans/s:",
        bg as f64 / bg_started.elapsed().as_secs_f64()
    );
    println!(
        "  {:<26} {:>9} {:>9} {:>10}",
        "query", "p50 ms", "p99 ms", "avg hits"
    );
    for (name, p50, p99, hits) in report {
        println!(
            "  {name:<26} {:>9.2} {:>9.2} {hits:>10.1}",
            ms(p50),
            ms(p99)
        );
    }
    if args.elasticsearch.is_none() && !args.keep && args.dir.is_none() {
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
