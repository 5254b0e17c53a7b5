//! Scale out: two `dlog-indexer` processes in one consumer group index 8 concurrent streams of
//! OTLP load that goes through the collector bridge and tansu into one Elasticsearch-API store
//! (osmem). One indexer is killed with SIGKILL mid-load. Then:
//! - the dead indexer's partitions are read again: Kafka's group protocol gives them to the
//!   survivor;
//!   on tansu 0.6.0, which hands a dead member's partitions to nobody until a member joins,
//!   once a replacement joins (the test prints whether the survivor alone took them over);
//!   ownership is read from each indexer's `/metrics` (consumer lag, reported for assigned
//!   partitions);
//! - every span the bridge answered OK is in the store;
//! - the span writes the indexers counted in `/metrics` exceed the stored spans by at most the
//!   spans in the records after the killed indexer's last commit (the replayed tail).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dlog_testkit::{free_port, read_topic, unique_name, Elastic, Kafka};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

const STREAMS: u64 = 8;
/// Each stream sends one request per interval: a steady load that lasts through the kill and
/// the rebalance, within what osmem indexes.
const REQUEST_INTERVAL: Duration = Duration::from_millis(250);
const TRACES_PER_REQUEST: u64 = 2;
const SPANS_PER_TRACE: u64 = 5;
const SPAN_PARTITIONS: i32 = 4;

struct Topics {
    spans: String,
    logs: String,
    heartbeats: String,
    dead_letters: String,
}

struct Indexer {
    child: Child,
    admin: String,
    name: &'static str,
    log: std::path::PathBuf,
}

impl Indexer {
    fn start(
        dir: &Path,
        name: &'static str,
        kafka: &Kafka,
        elastic: &Elastic,
        group: &str,
        prefix: &str,
        topics: &Topics,
    ) -> Indexer {
        let admin = format!("127.0.0.1:{}", free_port().unwrap());
        // Short sessions so that the group notices the kill quickly; lag read every 300 ms
        // so that /metrics shows the assignment.
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "kafka_brokers = \"{}\"\ngroup_id = \"{group}\"\nsession_timeout_ms = 6000\n\
                 trace_logs_topic = \"{}\"\nservice_logs_topic = \"{}\"\n\
                 heartbeat_logs_topic = \"{}\"\ndead_letters_topic = \"{}\"\n\
                 admin = \"{admin}\"\nbatch_max_records = 20\nbatch_linger_ms = 20\n\
                 lag_interval_ms = 300\n\
                 [store]\nelasticsearch_url = \"{}\"\nindex_prefix = \"{prefix}\"\n",
                kafka.brokers,
                topics.spans,
                topics.logs,
                topics.heartbeats,
                topics.dead_letters,
                elastic.url
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dlog-indexer"))
            .args(["--config", config.to_str().unwrap(), "run"])
            .env("DLOG_INDEXER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dlog-indexer");
        Indexer {
            child,
            admin,
            name,
            log: dir.join(format!("{name}.log")),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn metrics(&self) -> Option<String> {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// Span documents the store acknowledged to this indexer.
    async fn spans_written(&self) -> Option<u64> {
        let text = self.metrics().await?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("dlog_indexer_documents_written_total{kind=\"span\"}"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        )
    }

    /// The partitions of `topic` this indexer reported lag for: assigned to it now or before.
    async fn partitions(&self, topic: &str) -> BTreeSet<i32> {
        let Some(text) = self.metrics().await else {
            return BTreeSet::new();
        };
        let needle = format!("topic=\"{topic}\"");
        text.lines()
            .filter(|l| l.starts_with("dlog_indexer_consumer_lag{") && l.contains(&needle))
            .filter_map(|l| {
                let rest = l.split("partition=\"").nth(1)?;
                rest.split('"').next()?.parse().ok()
            })
            .collect()
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Stored span documents under the test's index prefix.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_indexers_share_the_load_and_the_survivor_takes_over_without_loss() {
    let kafka = Kafka::start().unwrap();
    let elastic = Elastic::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics {
        spans: unique_name("trace_logs"),
        logs: unique_name("service_logs"),
        heartbeats: unique_name("heartbeat_logs"),
        dead_letters: unique_name("dead_letters"),
    };
    kafka
        .create_topics(&[&topics.spans], SPAN_PARTITIONS)
        .await
        .unwrap();
    kafka
        .create_topics(&[&topics.logs, &topics.heartbeats, &topics.dead_letters], 1)
        .await
        .unwrap();
    let group = unique_name("indexers");
    let prefix = unique_name("scale");

    let bridge = collector_bridge::start(collector_bridge::Config {
        kafka_brokers: kafka.brokers.clone(),
        otlp_grpc: "127.0.0.1:0".parse().unwrap(),
        otlp_http: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        trace_logs_topic: topics.spans.clone(),
        service_logs_topic: topics.logs.clone(),
        heartbeat_logs_topic: topics.heartbeats.clone(),
        // One record per Kafka record batch: tansu 0.6 answers a fetch that starts inside a
        // batch with the next batch, so a member that starts from an offset committed inside
        // one skips the rest of it (docs/sizing.md, "Fault drills"); Apache Kafka does not.
        kafka: [("batch.num.messages".to_string(), "1".to_string())].into(),
        ..Default::default()
    })
    .await
    .expect("bridge");

    let start = |name| Indexer::start(dir.path(), name, &kafka, &elastic, &group, &prefix, &topics);
    // The victim starts alone; the survivor joins once the victim reads every partition, so
    // that each one's reported partitions tell what it owns (see `partitions`).
    let victim = start("victim");

    // 8 streams of load; each counts the spans the bridge answered OK.
    let answered = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let url = format!("http://{}/v1/traces", bridge.http_addr());
    let now = dlog_storage::store::now_unix_nano();
    let client = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for stream in 0..STREAMS {
        let (answered, url, client) = (Arc::clone(&answered), url.clone(), client.clone());
        let refused = Arc::clone(&refused);
        let stop = Arc::clone(&stop);
        streams.push(tokio::spawn(async move {
            let mut next = tokio::time::Instant::now();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep_until(next).await;
                next += REQUEST_INTERVAL;
                n += 1;
                let body = request(stream, n, now).encode_to_vec();
                let ok = client
                    .post(&url)
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    answered.fetch_add(TRACES_PER_REQUEST * SPANS_PER_TRACE, Ordering::SeqCst);
                } else {
                    refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }

    let all: BTreeSet<i32> = (0..SPAN_PARTITIONS).collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    while victim.partitions(&topics.spans).await != all {
        assert!(
            Instant::now() < deadline,
            "the first indexer did not read every partition within 40 s:\n{}",
            victim.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let survivor = start("survivor");

    // Both joined and split the span topic's partitions between them.
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let survivors_before = loop {
        let v = victim.partitions(&topics.spans).await;
        let s = survivor.partitions(&topics.spans).await;
        if !s.is_empty() && s.len() < all.len() && v.union(&s).count() == all.len() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not split the partitions within 60 s (victim {v:?}, survivor {s:?}):\n{}",
            survivor.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "group split after {:.1} s: survivor {survivors_before:?}",
        started.elapsed().as_secs_f64()
    );

    // Mid-load: freeze the store so that the victim's write count stops moving, read it, and
    // kill the victim; its committed offsets are then final until the survivor takes over.
    wait_for(
        "the victim to have written",
        Duration::from_secs(30),
        || {
            let victim = &victim;
            async move { victim.spans_written().await.filter(|n| *n > 0) }
        },
    )
    .await;
    // (A cluster given through ELASTICSEARCH_URL cannot be frozen: the count is then read
    // while it still moves, which can only make the duplicate check looser.)
    let frozen = elastic.pid().is_some();
    if frozen {
        elastic.pause().unwrap();
    }
    let victim_written = wait_for(
        "the victim's writes to settle",
        Duration::from_secs(20),
        || {
            let victim = &victim;
            async move {
                let a = victim.spans_written().await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let b = victim.spans_written().await?;
                (a == b).then_some(a)
            }
        },
    )
    .await;
    // The victim reported every partition it ever had (it started alone); it owns the
    // survivor's complement.
    let victims: BTreeSet<i32> = all
        .difference(&survivor.partitions(&topics.spans).await)
        .copied()
        .collect();
    assert!(!victims.is_empty() && victims.len() < all.len());
    let mut victim = victim;
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let killed_at = Instant::now();
    let committed_at_kill = committed(&kafka.brokers, &group, &topics.spans, SPAN_PARTITIONS);
    if frozen {
        elastic.resume().unwrap();
    }
    println!(
        "killed {} ({victim_written} spans written) owning partitions {victims:?}, committed {committed_at_kill:?}",
        victim.name
    );

    // The group rebalances once the victim's session (6 s) ends. On a Kafka broker the
    // survivor then reads every partition. tansu 0.6.0 hands the survivor only its own
    // partitions back and leaves the dead member's unread until a member joins, so the
    // survivor gets two and a half sessions to take them over (printed), then a replacement
    // indexer joins, as systemd's restart would start one.
    let session = Duration::from_millis(6_000);
    let observe_until = Instant::now() + session * 5 / 2;
    let mut survivor_alone = None;
    while Instant::now() < observe_until {
        if survivor.partitions(&topics.spans).await == all {
            survivor_alone = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "survivor alone took over every partition: {}",
        survivor_alone.map_or("no, within 15 s".to_string(), |d| format!(
            "after {:.1} s",
            d.as_secs_f64()
        ))
    );
    let replacement = start("replacement");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let s = survivor.partitions(&topics.spans).await;
        let r = replacement.partitions(&topics.spans).await;
        // The survivor's list only grows (it keeps what it once had), the replacement's is
        // what it was given: together they must cover the victim's partitions.
        if s.union(&r).count() == all.len() && (survivor_alone.is_some() || !r.is_empty()) {
            println!(
                "every partition read again {:.1} s after the kill (survivor {s:?}, replacement {r:?})",
                killed_at.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the victim's partitions {victims:?} were not read again (survivor {s:?}, replacement {r:?}):\n{}",
            survivor.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Load goes on for a while after the takeover, then stops.
    let answered_at_takeover = answered.load(Ordering::SeqCst);
    wait_for("load after the takeover", Duration::from_secs(30), || {
        let answered = Arc::clone(&answered);
        async move { (answered.load(Ordering::SeqCst) >= answered_at_takeover + 800).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for stream in streams {
        stream.await.unwrap();
    }
    let answered = answered.load(Ordering::SeqCst);
    assert_eq!(
        refused.load(Ordering::SeqCst),
        0,
        "the bridge refused requests"
    );

    // Every answered span is stored, exactly once per id (writes are idempotent).
    let stored = wait_for(
        "every answered span stored",
        Duration::from_secs(120),
        || {
            let (elastic, prefix) = (&elastic, &prefix);
            async move {
                let _ = reqwest::Client::new()
                    .post(format!("{}/{prefix}-jaeger-span-*/_refresh", elastic.url))
                    .send()
                    .await;
                stored_spans(elastic, prefix)
                    .await
                    .filter(|n| *n >= answered)
            }
        },
    )
    .await;
    assert_eq!(stored, answered, "more span documents than spans sent");

    // Writes beyond the stored spans come only from the victim's uncommitted tail.
    // A write's count follows the store's answer: wait until the live indexers have counted
    // everything the store holds.
    let (survivor_written, replacement_written) = wait_for(
        "the indexers to count every stored span",
        Duration::from_secs(30),
        || {
            let (survivor, replacement) = (&survivor, &replacement);
            async move {
                let s = survivor.spans_written().await?;
                let r = replacement.spans_written().await?;
                (victim_written + s + r >= stored).then_some((s, r))
            }
        },
    )
    .await;
    // Spans read so far, counted incrementally (decoding every record at each poll would be
    // quadratic).
    let (mut read, mut read_spans) = (0, 0u64);
    let records = read_topic(
        &kafka.brokers,
        &topics.spans,
        Duration::from_secs(60),
        |r| {
            read_spans += r[read..].iter().map(spans_in).sum::<u64>();
            read = r.len();
            read_spans >= answered
        },
    )
    .unwrap();
    assert_eq!(
        records.iter().map(spans_in).sum::<u64>(),
        answered,
        "the span topic was not read completely"
    );
    let mut tail_records = 0u64;
    let mut tail_spans = 0u64;
    for record in &records {
        let from = committed_at_kill
            .get(&(topics.spans.clone(), record.partition))
            .copied()
            .unwrap_or(0);
        if victims.contains(&record.partition) && record.offset >= from {
            tail_records += 1;
            tail_spans += spans_in(record);
        }
    }
    let written = victim_written + survivor_written + replacement_written;
    println!(
        "spans stored {stored}; written {written} (victim {victim_written}, survivor {survivor_written}, \
         replacement {replacement_written}); \
         replayed tail after the victim's last commit: {tail_records} records, {tail_spans} spans"
    );
    assert!(
        written >= stored,
        "fewer writes ({written}) than stored spans ({stored})"
    );
    assert!(
        written - stored <= tail_spans,
        "{} spans written more than once, more than the victim's uncommitted tail ({tail_spans})",
        written - stored
    );
    bridge.shutdown().await.unwrap();
}
