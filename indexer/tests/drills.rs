//! Fault drills on Kafka (tansu) and an Elasticsearch-API store (osmem), under 8 concurrent
//! streams of OTLP load through the collector bridge. Each drill retries, as an SDK or a
//! collector would, every request that got no OK; then reads the store to a known end (every
//! span ever answered OK, no fewer and no more); and counts the store's acknowledged span
//! writes through a proxy in front of osmem that outlives the killed processes.
//!
//! - `indexer_killed_three_times`: `dlog-indexer` is killed with SIGKILL at random points
//!   (seeded, seed printed; `DRILL_SEED` replays one) and restarted at once, as systemd's
//!   `Restart=` would. The writes beyond the stored spans are bounded by the records after
//!   each kill's last commit. The time from each restart to the restarted indexer's first
//!   store write is printed (p50 / max), and must happen within a generous deadline.
//! - `store_paused`: osmem is frozen (SIGSTOP) for longer than the indexer's store timeout and
//!   its group session; the indexer holds (commits nothing) and stays in its group (no commit
//!   lost to a rebalance), then everything arrives.
//! - `broker_paused`: tansu is frozen for longer than the session timeout: the bridge answers
//!   no request OK while Kafka cannot take it, recovers by itself once it returns, and the
//!   indexer consumes again without any restart.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use dlog_core::encoding::{decode_traces, Encoding};
use dlog_core::source::RawRecord;
use dlog_testkit::{free_port, read_topic, unique_name, Elastic, Kafka, StoreProxy};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use rand::{Rng, SeedableRng};

const STREAMS: u64 = 8;
/// Each stream sends one request per interval (320 spans/s in all).
const REQUEST_INTERVAL: Duration = Duration::from_millis(250);
const TRACES_PER_REQUEST: u64 = 2;
const SPANS_PER_TRACE: u64 = 5;
const SPANS_PER_REQUEST: u64 = TRACES_PER_REQUEST * SPANS_PER_TRACE;
const SPAN_PARTITIONS: i32 = 4;
const SESSION_MS: u64 = 6_000;
/// The restarted indexer's static group membership, the same for every restart.
const STATIC_MEMBER: &str = "[consumer]\n\"group.instance.id\" = \"drill-indexer\"\n";

struct Setup {
    kafka: Kafka,
    elastic: Elastic,
    proxy: StoreProxy,
    dir: tempfile::TempDir,
    spans: String,
    others: [String; 3],
    group: String,
    prefix: String,
    bridge: collector_bridge::RunningBridge,
    /// The indexers' `session_timeout_ms`.
    session_ms: u64,
}

impl Setup {
    async fn new(bridge: collector_bridge::Config) -> Setup {
        let kafka = Kafka::start().unwrap();
        let elastic = Elastic::start().unwrap();
        let proxy = StoreProxy::start(&elastic.url, "-jaeger-span-")
            .await
            .unwrap();
        let spans = unique_name("trace_logs");
        let others = [
            unique_name("service_logs"),
            unique_name("heartbeat_logs"),
            unique_name("dead_letters"),
        ];
        kafka
            .create_topics(&[&spans], SPAN_PARTITIONS)
            .await
            .unwrap();
        kafka
            .create_topics(&[&others[0], &others[1], &others[2]], 1)
            .await
            .unwrap();
        // One record per Kafka record batch: tansu 0.6 answers a fetch that starts inside a
        // batch with the next batch, so an indexer restarted from an offset committed inside
        // one skips the rest of it (docs/sizing.md, "Fault drills"); Apache Kafka does not.
        let mut bridge = bridge;
        bridge
            .kafka
            .insert("batch.num.messages".to_string(), "1".to_string());
        let bridge = collector_bridge::start(collector_bridge::Config {
            kafka_brokers: kafka.brokers.clone(),
            otlp_grpc: "127.0.0.1:0".parse().unwrap(),
            otlp_http: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            trace_logs_topic: spans.clone(),
            service_logs_topic: others[0].clone(),
            heartbeat_logs_topic: others[1].clone(),
            ..bridge
        })
        .await
        .expect("bridge");
        Setup {
            kafka,
            elastic,
            proxy,
            dir: tempfile::tempdir().unwrap(),
            spans,
            others,
            group: unique_name("indexers"),
            prefix: unique_name("drill"),
            bridge,
            session_ms: SESSION_MS,
        }
    }

    /// Starts `dlog-indexer` (run `run`) against the proxy in front of the store.
    fn indexer(&self, run: usize, extra_store: &str) -> Indexer {
        let admin = format!("127.0.0.1:{}", free_port().unwrap());
        let config = self.dir.path().join(format!("indexer-{run}.toml"));
        std::fs::write(
            &config,
            format!(
                "kafka_brokers = \"{}\"\ngroup_id = \"{}\"\nsession_timeout_ms = {}\n\
                 trace_logs_topic = \"{}\"\nservice_logs_topic = \"{}\"\n\
                 heartbeat_logs_topic = \"{}\"\ndead_letters_topic = \"{}\"\n\
                 admin = \"{admin}\"\nbatch_max_records = 20\nbatch_linger_ms = 20\n\
                 retry_initial_ms = 100\nretry_max_ms = 1000\n\
                 [store]\nelasticsearch_url = \"{}\"\nindex_prefix = \"{}\"\n{extra_store}",
                self.kafka.brokers,
                self.group,
                self.session_ms,
                self.spans,
                self.others[0],
                self.others[1],
                self.others[2],
                self.proxy.url,
                self.prefix,
            ),
        )
        .unwrap();
        let log = self.dir.path().join(format!("indexer-{run}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_dlog-indexer"))
            .args(["--config", config.to_str().unwrap(), "run"])
            // DRILL_INDEXER_LOG (e.g. `info,rdkafka=debug`) shows more when a drill fails.
            .env(
                "DLOG_INDEXER_LOG",
                std::env::var("DRILL_INDEXER_LOG").unwrap_or("info,rdkafka=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start dlog-indexer");
        Indexer { child, admin, log }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/traces", self.bridge.http_addr())
    }

    /// Waits until the store holds `answered` spans, then checks it holds no more.
    async fn assert_stored(&self, answered: u64) -> u64 {
        let stored = self.wait_stored(answered).await;
        assert_eq!(
            stored, answered,
            "span documents other than the answered spans"
        );
        let dead = self.dead_letters().await;
        assert!(dead.is_empty(), "valid records dead-lettered: {dead:?}");
        stored
    }

    /// Waits until the store holds at least `answered` spans (load may still be running).
    async fn wait_stored(&self, answered: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut stored = None;
        while Instant::now() < deadline {
            let _ = reqwest::Client::new()
                .post(format!(
                    "{}/{}-jaeger-span-*/_refresh",
                    self.elastic.url, self.prefix
                ))
                .send()
                .await;
            stored = stored_spans(&self.elastic, &self.prefix).await;
            if stored.is_some_and(|n| n >= answered) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if stored.is_none_or(|n| n < answered) {
            println!("missing: {:?}", self.missing(answered).await);
        }
        assert!(
            stored.is_some_and(|n| n >= answered),
            "{answered} spans answered OK, {stored:?} stored after 90 s; committed {:?}; \
             {} writes acknowledged; dead letters: {:?}\n{}",
            tokio::task::block_in_place(|| self.committed()),
            self.proxy.writes(),
            self.dead_letters().await,
            self.logs()
        );
        stored.unwrap()
    }

    /// The records (partition, offset, trace id) whose spans are not all stored.
    async fn missing(&self, answered: u64) -> Vec<(i32, i64, String)> {
        let url = format!("{}/{}-jaeger-span-*/_search", self.elastic.url, self.prefix);
        let query = serde_json::json!({"size": 0, "aggs": {"t": {"terms": {"field": "traceID", "size": 100000}}}});
        let Ok(answer) = reqwest::Client::new().post(url).json(&query).send().await else {
            return Vec::new();
        };
        let body: serde_json::Value = answer.json().await.unwrap_or_default();
        let stored: BTreeMap<String, u64> = body["aggregations"]["t"]["buckets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| Some((b["key"].as_str()?.to_string(), b["doc_count"].as_u64()?)))
            .collect();
        let mut out = Vec::new();
        for record in self.records(answered).await {
            let request = decode_traces(Encoding::OtlpProto, &record.payload).unwrap();
            for span in request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .take(1)
            {
                let trace = hex::encode(&span.trace_id);
                if stored.get(&trace).copied().unwrap_or(0) < spans_in(&record) {
                    let (sent, acked) = self.proxy.ids_starting_with(&trace);
                    out.push((
                        record.partition,
                        record.offset,
                        format!(
                            "trace {trace}: {sent} spans sent to the store, {acked} acknowledged"
                        ),
                    ));
                }
            }
        }
        out
    }

    /// The dead letters' reasons.
    async fn dead_letters(&self) -> Vec<String> {
        let (brokers, topic) = (self.kafka.brokers.clone(), self.others[2].clone());
        tokio::task::spawn_blocking(move || {
            read_topic(&brokers, &topic, Duration::from_secs(3), |_| false)
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    r.headers
                        .iter()
                        .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        })
        .await
        .unwrap()
    }

    /// The last lines of every indexer's log.
    fn logs(&self) -> String {
        let mut out = String::new();
        for run in 0.. {
            let Ok(log) =
                std::fs::read_to_string(self.dir.path().join(format!("indexer-{run}.log")))
            else {
                break;
            };
            let lines: Vec<&str> = log.lines().collect();
            out += &format!("--- indexer-{run}.log\n");
            for line in &lines[lines.len().saturating_sub(400)..] {
                out += line;
                out.push('\n');
            }
        }
        out
    }

    /// Reads the span topic until it holds every answered span (by distinct span id: a
    /// request refused after a timeout may have reached Kafka as well as its retry).
    async fn records(&self, answered: u64) -> Vec<RawRecord> {
        let (brokers, topic) = (self.kafka.brokers.clone(), self.spans.clone());
        tokio::task::spawn_blocking(move || {
            let mut read = 0;
            let mut ids = std::collections::BTreeSet::new();
            read_topic(&brokers, &topic, Duration::from_secs(60), |r| {
                for record in &r[read..] {
                    ids.extend(span_ids(record));
                }
                read = r.len();
                ids.len() as u64 >= answered
            })
            .unwrap()
        })
        .await
        .unwrap()
    }

    fn committed(&self) -> BTreeMap<(String, i32), i64> {
        committed(
            &self.kafka.brokers,
            &self.group,
            &self.spans,
            SPAN_PARTITIONS,
        )
    }
}

struct Indexer {
    child: Child,
    admin: String,
    log: PathBuf,
}

impl Indexer {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn metric(&self, name: &str) -> Option<u64> {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        )
    }

    /// Span documents the store acknowledged to this process.
    async fn spans_written(&self) -> Option<u64> {
        self.metric("dlog_indexer_documents_written_total{kind=\"span\"}")
            .await
    }

    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 8 senders that, like an SDK's exporter, re-send a request until it is answered OK, then
/// send the next one.
struct Load {
    answered: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    streams: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts the streams once one request went through to the store (see [`warm_up`]).
    async fn start(setup: &Setup, url: String) -> Load {
        let warm = warm_up(setup, &url).await;
        let answered = Arc::new(AtomicU64::new(warm));
        let refused = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let streams = (0..STREAMS)
            .map(|stream| {
                let (answered, refused) = (Arc::clone(&answered), Arc::clone(&refused));
                let (stop, client, url) = (Arc::clone(&stop), client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut next = tokio::time::Instant::now();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        tokio::time::sleep_until(next).await;
                        next += REQUEST_INTERVAL;
                        n += 1;
                        // Spans start 1 s before they are sent: a record's timestamp (the
                        // bridge's, or the spans') then never postdates its production.
                        let now = dlog_storage::store::now_unix_nano();
                        let body = request(stream, n, now).encode_to_vec();
                        let given_up = Instant::now() + Duration::from_secs(120);
                        loop {
                            let ok = client
                                .post(&url)
                                .header("content-type", "application/x-protobuf")
                                .body(body.clone())
                                .send()
                                .await
                                .is_ok_and(|r| r.status().is_success());
                            if ok {
                                answered.fetch_add(SPANS_PER_REQUEST, Ordering::SeqCst);
                                break;
                            }
                            refused.fetch_add(1, Ordering::SeqCst);
                            assert!(
                                Instant::now() < given_up,
                                "stream {stream} request {n} refused for 120 s"
                            );
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            next = tokio::time::Instant::now();
                        }
                    }
                })
            })
            .collect();
        Load {
            answered,
            refused,
            stop,
            streams,
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Stops after each stream's current request is answered; returns the spans answered OK.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        for stream in self.streams {
            stream.await.unwrap();
        }
        self.answered.load(Ordering::SeqCst)
    }
}

/// Sends one request and waits until the store holds it, before the load starts, so that
/// the load does not race the store's first writes into a new index (spans were seen missing
/// from there: docs/sizing.md, "Fault drills"). Returns its spans.
async fn warm_up(setup: &Setup, url: &str) -> u64 {
    let body = request(80, 1, dlog_storage::store::now_unix_nano()).encode_to_vec();
    let client = reqwest::Client::new();
    wait_for(
        "the first request answered",
        Duration::from_secs(60),
        || {
            let request = client
                .post(url)
                .header("content-type", "application/x-protobuf")
                .body(body.clone());
            async move {
                request
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            }
        },
    )
    .await;
    setup.wait_stored(SPANS_PER_REQUEST).await;
    SPANS_PER_REQUEST
}

/// One request: `TRACES_PER_REQUEST` traces of `SPANS_PER_TRACE` spans, ids unique per
/// (stream, request).
fn request(
    stream: u64,
    n: u64,
    now: u64,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    let mut spans = Vec::new();
    for t in 0..TRACES_PER_REQUEST {
        let mut trace = [0u8; 16];
        trace[..8].copy_from_slice(&(stream + 1).to_be_bytes());
        trace[8..].copy_from_slice(&(n * TRACES_PER_REQUEST + t + 1).to_be_bytes());
        let base = ((stream + 1) << 40) | ((n * TRACES_PER_REQUEST + t) << 8);
        for s in 0..SPANS_PER_TRACE {
            spans.push(otlp_span(
                &trace,
                base + s + 1,
                (s > 0).then_some(base + 1),
                "GET /items",
                SpanKind::Server,
                now - 1_000_000_000 + s * 1_000_000,
                1,
            ));
        }
    }
    traces(resource("shop", &format!("shop-{stream}"), &[]), spans)
}

fn span_ids(record: &RawRecord) -> Vec<Vec<u8>> {
    let request = decode_traces(Encoding::OtlpProto, &record.payload).expect("a span record");
    request
        .resource_spans
        .into_iter()
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .map(|s| s.span_id)
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn seed() -> u64 {
    std::env::var("DRILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// p50 and max, in seconds.
fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    format!(
        "p50 {:.1} s, max {:.1} s over {} restarts: {:?}",
        times[times.len() / 2].as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        times.len(),
        times
            .iter()
            .map(|t| format!("{:.1}", t.as_secs_f64()))
            .collect::<Vec<_>>()
    )
}

/// Waits until `indexer` wrote to the store; returns how long that took.
async fn first_write(indexer: &Indexer, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        if indexer.spans_written().await.is_some_and(|n| n > 0) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what}: the indexer stored nothing within {within:?}:\n{}",
            indexer.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn indexer_killed_three_times_under_load_loses_nothing_and_resumes() {
    const KILLS: usize = 3;
    let seed = seed();
    println!("seed {seed} (DRILL_SEED={seed} replays the kill points)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut setup = Setup::new(Default::default()).await;
    // A restarted indexer should join before the killed one's session ends: tansu 0.6.0 may
    // never complete the rebalance otherwise (docs/sizing.md, "Fault drills"). 12 s leaves
    // room for a slow start on a loaded machine.
    setup.session_ms = 12_000;
    let mut indexer = setup.indexer(0, STATIC_MEMBER);
    let load = Load::start(&setup, setup.url()).await;
    first_write(&indexer, Duration::from_secs(60), "first start").await;
    // Kills start once the group has settled.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // (kill time in ms since the epoch, the group's committed offsets after the kill)
    let mut kills = Vec::new();
    let mut resumed = Vec::new();
    for run in 1..=KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..5_000))).await;
        indexer.kill_9();
        let at = now_ms();
        let committed = tokio::task::block_in_place(|| setup.committed());
        println!(
            "kill {run}: committed {:?}",
            committed
                .iter()
                .map(|((_, p), o)| (p, o))
                .collect::<Vec<_>>()
        );
        kills.push((at, committed));
        // Restarted at once, as `Restart=on-failure` would.
        let at_kill = kills.last().unwrap().1.clone();
        indexer = setup.indexer(run, STATIC_MEMBER);
        let restarted = Instant::now();
        let first = first_write(
            &indexer,
            Duration::from_secs(120),
            &format!("restart {run}"),
        )
        .await;
        // Consuming again means every partition: each one's committed offset moves past
        // where it was at the kill (the load goes on in all of them).
        let took = loop {
            let now = tokio::task::block_in_place(|| setup.committed());
            let moved = (0..SPAN_PARTITIONS).all(|p| {
                let key = (setup.spans.clone(), p);
                now.get(&key).copied().unwrap_or(0) > at_kill.get(&key).copied().unwrap_or(0)
            });
            if moved {
                break restarted.elapsed();
            }
            assert!(
                restarted.elapsed() < Duration::from_secs(120),
                "restart {run}: some partitions were not consumed again within 120 s \
                 (committed at the kill {at_kill:?}, now {now:?}):\n{}",
                setup.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        println!(
            "kill {run}: the restarted indexer stored again after {:.1} s, every partition \
             after {:.1} s",
            first.as_secs_f64(),
            took.as_secs_f64()
        );
        resumed.push(took);
    }
    let answered_at_last = load.answered();
    wait_for(
        "load after the last restart",
        Duration::from_secs(30),
        || {
            let answered = load.answered();
            async move { (answered >= answered_at_last + 300).then_some(()) }
        },
    )
    .await;
    let refused = load.refused();
    let answered = load.finish().await;
    assert_eq!(refused, 0, "the bridge refused requests with Kafka up");

    let stored = setup.assert_stored(answered).await;
    // Everything stored was written through the proxy, which counts what the store
    // acknowledged, for the killed processes as well.
    wait_for(
        "the proxy to count every stored span",
        Duration::from_secs(10),
        || {
            let writes = setup.proxy.writes();
            async move { (writes >= stored).then_some(()) }
        },
    )
    .await;
    let writes = setup.proxy.writes();
    // A killed indexer may have written, without committing, the records after its last
    // commit that existed at the kill: only those can be written twice.
    let records = setup.records(answered).await;
    let tail: u64 = kills
        .iter()
        .map(|(at, committed)| {
            records
                .iter()
                .filter(|r| {
                    let from = committed
                        .get(&(r.topic.clone(), r.partition))
                        .copied()
                        .unwrap_or(0);
                    r.offset >= from && r.timestamp_ms.is_some_and(|t| t <= *at)
                })
                .map(spans_in)
                .sum::<u64>()
        })
        .sum();
    println!(
        "{answered} spans answered OK and stored; {writes} span writes acknowledged by the store \
         ({} rewritten), bound by {tail} spans after the kills' last commits",
        writes - stored
    );
    println!("restart to consuming again: {}", summary(resumed));
    assert!(
        writes >= stored,
        "fewer writes ({writes}) than stored spans"
    );
    assert!(
        writes - stored <= tail,
        "{} spans written twice, more than the uncommitted tails ({tail})",
        writes - stored
    );
    setup.bridge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_paused_the_indexer_holds_stays_in_its_group_and_everything_arrives() {
    // Longer than the store request timeout and than the group session.
    const PAUSE: Duration = Duration::from_secs(12);
    let setup = Setup::new(Default::default()).await;
    if setup.elastic.pid().is_none() {
        println!("skipped: a store given through ELASTICSEARCH_URL cannot be paused");
        return;
    }
    let indexer = setup.indexer(0, "request_timeout_ms = 2000\n");
    let load = Load::start(&setup, setup.url()).await;
    first_write(&indexer, Duration::from_secs(60), "start").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    setup.elastic.pause().unwrap();
    let paused_at = Instant::now();
    // A write answered just before the pause may still be committed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = tokio::task::block_in_place(|| setup.committed());
    let written_before = indexer.spans_written().await.unwrap();
    tokio::time::sleep(PAUSE.saturating_sub(paused_at.elapsed())).await;
    let after = tokio::task::block_in_place(|| setup.committed());
    let paused_gauge = indexer.metric("dlog_indexer_paused").await;
    assert_eq!(
        before, after,
        "the indexer committed offsets while the store was frozen"
    );
    assert_eq!(
        indexer.spans_written().await,
        Some(written_before),
        "writes counted while the store was frozen"
    );
    let answered_during = load.answered();
    setup.elastic.resume().unwrap();
    let resumed = Instant::now();
    println!("store frozen {PAUSE:?}; the indexer's paused gauge then: {paused_gauge:?}");

    // Storing again, with commits moving on, within a bounded time (printed).
    let moved = wait_for(
        "commits after the store returned",
        Duration::from_secs(60),
        || {
            let setup = &setup;
            let after = &after;
            async move {
                let now = tokio::task::block_in_place(|| setup.committed());
                (now != *after).then(|| resumed.elapsed())
            }
        },
    )
    .await;
    println!(
        "first commit {:.1} s after the store returned",
        moved.as_secs_f64()
    );
    let answered_at_resume = answered_during;
    wait_for("load after the pause", Duration::from_secs(30), || {
        let answered = load.answered();
        async move { (answered >= answered_at_resume + 300).then_some(()) }
    })
    .await;
    let answered = load.finish().await;
    setup.assert_stored(answered).await;

    // Held, not evicted: no commit was refused by a rebalance.
    assert_eq!(
        indexer.metric("dlog_indexer_commit_failures_total").await,
        Some(0),
        "commits failed:\n{}",
        indexer.log()
    );
    let log = indexer.log();
    assert!(
        !log.contains("lost to a rebalance"),
        "the group evicted the indexer while the store was frozen:\n{log}"
    );
    println!(
        "{answered} spans answered and stored; {} span writes acknowledged",
        setup.proxy.writes()
    );
    setup.bridge.shutdown().await.unwrap();
}

/// Freezes the broker for `pause` under load: no request may be answered OK meanwhile (after
/// the ones in flight), some are refused, and the bridge answers OK again by itself once the
/// broker returns (returned: how long after).
async fn freeze_broker(setup: &Setup, load: &Load, pause: Duration) -> Duration {
    setup.kafka.pause().unwrap();
    let paused_at = Instant::now();
    // Requests in flight at the pause may still have been acknowledged; after that, nothing
    // may be answered OK while the broker is frozen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (answered_before, refused_before) = (load.answered(), load.refused());
    tokio::time::sleep(pause.saturating_sub(paused_at.elapsed())).await;
    let (answered_during, refused_during) = (load.answered(), load.refused());
    setup.kafka.resume().unwrap();
    let resumed = Instant::now();
    assert_eq!(
        answered_during, answered_before,
        "requests answered OK while the broker was frozen"
    );
    assert!(
        refused_during > refused_before,
        "no request was refused while the broker was frozen"
    );
    let back = wait_for("the bridge to answer OK", Duration::from_secs(60), || {
        let answered = load.answered();
        async move { (answered > answered_during).then(|| resumed.elapsed()) }
    })
    .await;
    println!(
        "broker frozen {pause:?}: {} requests refused meanwhile; the bridge answered OK again \
         {:.1} s after it returned",
        refused_during - refused_before,
        back.as_secs_f64()
    );
    back
}

/// Sends one marker request (stream `90 + k`, answered OK, retried until then) and waits
/// until its first trace is stored: how long after `since` that took, or `None` after
/// `within`. Records fetched before an outage do not count: only what was sent after it.
async fn marker_stored(
    setup: &Setup,
    k: u64,
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    let stream = 90 + k;
    let body = request(stream, 1, dlog_storage::store::now_unix_nano()).encode_to_vec();
    let client = reqwest::Client::new();
    loop {
        let ok = client
            .post(setup.url())
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        assert!(
            since.elapsed() < within,
            "marker {k} refused for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The first trace of request 1: trace id (stream + 1, 1 * TRACES_PER_REQUEST + 1).
    let trace = format!("{:016x}{:016x}", stream + 1, TRACES_PER_REQUEST + 1);
    let url = format!(
        "{}/{}-jaeger-span-*/_count",
        setup.elastic.url, setup.prefix
    );
    let query = serde_json::json!({"query": {"term": {"traceID": trace}}});
    while since.elapsed() < within {
        let _ = client
            .post(format!(
                "{}/{}-jaeger-span-*/_refresh",
                setup.elastic.url, setup.prefix
            ))
            .send()
            .await;
        let count = async {
            let answer = client.post(&url).json(&query).send().await.ok()?;
            answer.json::<serde_json::Value>().await.ok()?["count"].as_u64()
        }
        .await;
        if count.is_some_and(|n| n > 0) {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_paused_the_bridge_refuses_then_recovers_by_itself() {
    let setup = Setup::new(collector_bridge::Config {
        produce_timeout_ms: 2_000,
        ..Default::default()
    })
    .await;
    let indexer = setup.indexer(0, "");
    let load = Load::start(&setup, setup.url()).await;
    first_write(&indexer, Duration::from_secs(60), "start").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. Frozen for longer than the bridge's produce timeout, within the group session: the
    // bridge refuses meanwhile, then everything answered is stored, with no restart.
    freeze_broker(&setup, &load, Duration::from_millis(SESSION_MS * 2 / 3)).await;
    let returned = Instant::now();
    let Some(took) = marker_stored(&setup, 0, returned, Duration::from_secs(60)).await else {
        panic!(
            "the indexer stored nothing sent after the broker's return within 60 s:\n{}",
            setup.logs()
        );
    };
    println!(
        "a request sent after the broker returned was stored {:.1} s later",
        took.as_secs_f64()
    );
    let answered_back = load.answered();
    wait_for("load after the pause", Duration::from_secs(30), || {
        let answered = load.answered();
        async move { (answered >= answered_back + 200).then_some(()) }
    })
    .await;
    // Everything answered so far (and the marker) is stored; load goes on.
    setup.wait_stored(load.answered() + SPANS_PER_REQUEST).await;

    // 2. Frozen for longer than the group session: the bridge still refuses meanwhile and
    // recovers by itself, and every span it answered OK is in Kafka. Whether the group
    // resumes is reported: tansu 0.6.0 keeps the expired member as the group's leader and
    // never completes the rebalance (docs/sizing.md, "Fault drills").
    freeze_broker(&setup, &load, Duration::from_millis(SESSION_MS * 5 / 3)).await;
    let returned = Instant::now();
    let answered = load.finish().await;
    let records = setup.records(answered).await;
    let in_kafka: std::collections::BTreeSet<Vec<u8>> = records.iter().flat_map(span_ids).collect();
    assert_eq!(
        in_kafka.len() as u64,
        answered,
        "spans answered OK are missing from Kafka (or others are there)"
    );
    match marker_stored(&setup, 1, returned, Duration::from_secs(30)).await {
        Some(took) => println!(
            "after a pause beyond the session, a request sent after the broker returned was \
             stored {:.1} s later",
            took.as_secs_f64()
        ),
        None => println!(
            "after a pause beyond the session, nothing sent after the broker returned was \
             stored within 30 s (the group did not re-form)"
        ),
    }
    setup.bridge.shutdown().await.unwrap();
}

/// The `collector-bridge` binary next to `dlog-indexer` (built by `cargo test --workspace`);
/// built here when this package's tests run alone.
fn bridge_binary() -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_BIN_EXE_dlog-indexer"))
        .parent()
        .unwrap();
    let bridge = dir.join("collector-bridge");
    if !bridge.is_file() {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "collector-bridge",
                "--bin",
                "collector-bridge",
            ])
            .env("CARGO_TARGET_DIR", dir.parent().unwrap())
            .status()
            .expect("run cargo build -p collector-bridge");
        assert!(status.success(), "cargo build -p collector-bridge failed");
    }
    bridge
}

/// Starts the bridge binary on `http` (OTLP/HTTP), producing to the setup's topics.
fn bridge_process(setup: &Setup, bin: &std::path::Path, http: u16, run: usize) -> Child {
    let log = setup.dir.path().join(format!("bridge-{run}.log"));
    Command::new(bin)
        .args(["--kafka-brokers", &setup.kafka.brokers])
        .args([
            "--otlp-grpc",
            &format!("127.0.0.1:{}", free_port().unwrap()),
        ])
        .args(["--otlp-http", &format!("127.0.0.1:{http}")])
        .args(["--admin", &format!("127.0.0.1:{}", free_port().unwrap())])
        .args(["--trace-logs-topic", &setup.spans])
        .args(["--service-logs-topic", &setup.others[0]])
        .args(["--heartbeat-logs-topic", &setup.others[1]])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start collector-bridge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bridge_killed_three_times_senders_retry_and_nothing_answered_is_lost() {
    const KILLS: usize = 3;
    let seed = seed();
    println!("seed {seed} (DRILL_SEED={seed} replays the kill points)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let bin = tokio::task::block_in_place(bridge_binary);
    let setup = Setup::new(Default::default()).await;
    let indexer = setup.indexer(0, "");
    let http = free_port().unwrap();
    let mut bridge = bridge_process(&setup, &bin, http, 0);
    dlog_testkit::wait_for_port(([127, 0, 0, 1], http).into(), Duration::from_secs(30)).unwrap();
    let load = Load::start(&setup, format!("http://127.0.0.1:{http}/v1/traces")).await;
    first_write(&indexer, Duration::from_secs(60), "start").await;

    let mut back = Vec::new();
    for run in 1..=KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..4_000))).await;
        bridge.kill().unwrap();
        bridge.wait().unwrap();
        let killed_at = Instant::now();
        // Down for a moment: the senders see refused connections and retry.
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1_500))).await;
        let answered_down = load.answered();
        bridge = bridge_process(&setup, &bin, http, run);
        let restarted = Instant::now();
        let took = wait_for(
            "the restarted bridge to answer OK",
            Duration::from_secs(60),
            || {
                let answered = load.answered();
                async move { (answered > answered_down).then(|| restarted.elapsed()) }
            },
        )
        .await;
        println!(
            "kill {run}: down {:.1} s; the restarted bridge answered OK {:.1} s after its start",
            (restarted - killed_at).as_secs_f64(),
            took.as_secs_f64()
        );
        back.push(took);
    }
    let answered_at_last = load.answered();
    wait_for(
        "load after the last restart",
        Duration::from_secs(30),
        || {
            let answered = load.answered();
            async move { (answered >= answered_at_last + 300).then_some(()) }
        },
    )
    .await;
    let refused = load.refused();
    let answered = load.finish().await;
    assert!(
        refused > 0,
        "no sender saw an error while the bridge was down"
    );

    let stored = setup.assert_stored(answered).await;
    wait_for(
        "the proxy to count every stored span",
        Duration::from_secs(10),
        || {
            let writes = setup.proxy.writes();
            async move { (writes >= stored).then_some(()) }
        },
    )
    .await;
    // A request the bridge put in Kafka but died before answering is sent again: its spans
    // are written twice. At most one request per stream is in flight at a kill.
    let in_flight = KILLS as u64 * STREAMS * SPANS_PER_REQUEST;
    let writes = setup.proxy.writes();
    println!(
        "{answered} spans answered OK and stored after {refused} refused attempts; {writes} span \
         writes acknowledged by the store ({} written twice; bound: {in_flight} spans in flight \
         at the kills)",
        writes - stored
    );
    println!("restart to answering OK: {}", summary(back));
    assert!(
        writes >= stored,
        "fewer writes ({writes}) than stored spans"
    );
    assert!(
        writes - stored <= in_flight,
        "{} spans written twice, more than were in flight at the kills ({in_flight})",
        writes - stored
    );
    let mut bridge = bridge;
    let _ = bridge.kill();
    let _ = bridge.wait();
    setup.bridge.shutdown().await.unwrap();
}
