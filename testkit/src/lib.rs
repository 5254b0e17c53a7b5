//! Test harness for dlog's system tests.
//!
//! Starts real servers on free loopback ports and reads what they hold:
//! * [`Kafka`]: a tansu Kafka-protocol broker (in-memory storage), one per test;
//! * [`Elastic`]: an osmem OpenSearch-API server, one per test, or the cluster named by
//!   `ELASTICSEARCH_URL` when set;
//! * [`unique_name`]: fresh topic, group and index names per test;
//! * [`tls`]: certificates made on the spot, and a TLS-terminating proxy that puts a plain
//!   server (osmem, a webhook receiver) behind `https://`;
//! * [`tls_probe::TlsProbe`]: a TLS listener in a broker's place, showing that a Kafka
//!   client's SSL settings reach the wire;
//! * [`read_topic`]: reads a topic from the beginning until a condition holds or a deadline
//!   passes (never from watermarks, which tansu reports wrongly for multi-record batches);
//! * [`StoreProxy`]: a proxy in front of the store that counts the writes it acknowledged,
//!   across the stage processes a fault drill kills.
//!
//! Binaries are found through `TANSU_BIN` / `OSMEM_SERVER_BIN`, then `~/.cargo/bin/tansu`,
//! `PATH`, and the installed `osmem_server` Python package.

pub mod tls;
pub mod tls_probe;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dlog_core::source::RawRecord;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// A name no other test uses: `prefix` plus a random suffix.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn find_binary(env: &str, name: &str, extra: &[PathBuf]) -> Result<PathBuf> {
    if let Ok(path) = std::env::var(env) {
        return Ok(PathBuf::from(path));
    }
    let mut candidates: Vec<PathBuf> = extra.to_vec();
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin").join(name));
    }
    if let Ok(path) = std::env::var("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|p| p.join(name)));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!("`{name}` not found: set {env} or run `bash .ci/run` once to install it")
        })
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .context("run kill")?;
    if !status.success() {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

/// A tansu broker on a free loopback port, killed on drop.
pub struct Kafka {
    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub brokers: String,
    child: Child,
}

impl Kafka {
    /// Starts a broker with in-memory storage and waits until it accepts connections.
    pub fn start() -> Result<Kafka> {
        let bin = find_binary("TANSU_BIN", "tansu", &[])?;
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let kafka = Kafka {
            brokers: format!("127.0.0.1:{port}"),
            child,
        };
        wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20))?;
        Ok(kafka)
    }

    /// Creates topics (3 partitions unless told otherwise).
    pub async fn create_topics(&self, topics: &[&str], partitions: i32) -> Result<()> {
        let properties = std::collections::BTreeMap::new();
        let settings = dlog_core::kafka::TopicSettings {
            brokers: &self.brokers,
            properties: &properties,
            partitions,
            replication: 1,
        };
        dlog_core::kafka::ensure_topics(&settings, topics)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing is answered.
    pub fn pause(&self) -> Result<()> {
        signal(self.child.id(), "-STOP")
    }

    /// Thaws a paused broker (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        signal(self.child.id(), "-CONT")
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = signal(self.child.id(), "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Elasticsearch-API server for one test: osmem on a free port, or the cluster named by
/// `ELASTICSEARCH_URL`.
pub struct Elastic {
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    child: Option<Child>,
}

impl Elastic {
    /// Starts osmem (or uses `ELASTICSEARCH_URL`) and waits until it answers HTTP.
    pub fn start() -> Result<Elastic> {
        if let Ok(url) = std::env::var("ELASTICSEARCH_URL") {
            return Ok(Elastic { url, child: None });
        }
        let bin = find_binary("OSMEM_SERVER_BIN", "osmem-server", &osmem_candidates())?;
        let port = free_port()?;
        let child = Command::new(&bin)
            .args([
                "-addr",
                &format!("127.0.0.1:{port}"),
                "-no-stdin-watch",
                "-parent-pid",
                &std::process::id().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let elastic = Elastic {
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
        };
        wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20))?;
        Ok(elastic)
    }

    /// The server's pid, when the harness started it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freezes the server (SIGSTOP). Only for a server the harness started.
    pub fn pause(&self) -> Result<()> {
        signal(
            self.pid()
                .context("ELASTICSEARCH_URL server cannot be paused")?,
            "-STOP",
        )
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        signal(
            self.pid()
                .context("ELASTICSEARCH_URL server cannot be resumed")?,
            "-CONT",
        )
    }
}

impl Drop for Elastic {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = signal(child.id(), "-CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn osmem_candidates() -> Vec<PathBuf> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import osmem_server,os;print(os.path.dirname(osmem_server.__file__))",
        ])
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            vec![PathBuf::from(dir).join("bin/osmem-server")]
        }
        _ => Vec::new(),
    }
}

/// Reads `topic` from the beginning of every partition, collecting records until `done`
/// says so or `within` passes, and returns what was read. It never trusts watermarks.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    within: Duration,
    mut done: impl FnMut(&[RawRecord]) -> bool,
) -> Result<Vec<RawRecord>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .context("create reader")?;
    let deadline = Instant::now() + within;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("metadata for {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {topic} has no partitions on {brokers}");
    }
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    while !done(&out) && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(dlog_core::kafka::raw_record(&m)),
            Some(Err(e)) => eprintln!("read_topic({topic}): {e}"),
            None => {}
        }
    }
    Ok(out)
}

/// An HTTP proxy in front of an Elasticsearch-API server that counts the documents the store
/// acknowledged in `_bulk` answers, per index kind. It outlives the stages a drill kills, so
/// its count covers every write of every process, killed or not.
pub struct StoreProxy {
    /// Base URL of the proxy, `http://127.0.0.1:PORT`: give it to the stage as the store.
    pub url: String,
    counts: std::sync::Arc<ProxyCounts>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyCounts {
    /// Index-name fragment whose documents are counted.
    needle: String,
    writes: std::sync::atomic::AtomicU64,
    /// Ids of the documents sent in bulk requests, and of those the store acknowledged.
    ids: std::sync::Mutex<(
        std::collections::HashSet<String>,
        std::collections::HashSet<String>,
    )>,
}

impl StoreProxy {
    /// Listens on a free loopback port and forwards every request to `upstream`; counts the
    /// bulk items into indices whose name contains `index_contains` that the store answered
    /// with a 2xx status.
    pub async fn start(upstream: &str, index_contains: &str) -> Result<StoreProxy> {
        let counts = std::sync::Arc::new(ProxyCounts {
            needle: index_contains.to_string(),
            ..Default::default()
        });
        let client = reqwest::Client::new();
        let upstream = upstream.trim_end_matches('/').to_string();
        let state = (std::sync::Arc::clone(&counts), client, upstream);
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(std::sync::Arc::new(state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(StoreProxy {
            url: format!("http://{addr}"),
            counts,
            task,
        })
    }

    /// Documents the store acknowledged through this proxy so far.
    pub fn writes(&self) -> u64 {
        self.counts.writes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many documents whose id starts with `prefix` were sent to the store, and how many
    /// of those it acknowledged: tells a write that never reached the store from one it
    /// acknowledged and then did not hold.
    pub fn ids_starting_with(&self, prefix: &str) -> (usize, usize) {
        let ids = self.counts.ids.lock().unwrap_or_else(|p| p.into_inner());
        let count = |set: &std::collections::HashSet<String>| {
            set.iter().filter(|id| id.starts_with(prefix)).count()
        };
        (count(&ids.0), count(&ids.1))
    }
}

impl Drop for StoreProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type ProxyState = std::sync::Arc<(std::sync::Arc<ProxyCounts>, reqwest::Client, String)>;

async fn forward(
    axum::extract::State(state): axum::extract::State<ProxyState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // On its own task: a write the store acknowledged is counted even when the writer was
    // killed (and its connection closed) before the answer came.
    let task = tokio::spawn(exchange(state, method, uri, headers, body));
    match task.await {
        Ok(Ok((status, out, bytes))) => (status, out, bytes).into_response(),
        Ok(Err(e)) => (axum::http::StatusCode::BAD_GATEWAY, e).into_response(),
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

async fn exchange(
    state: ProxyState,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> std::result::Result<
    (
        axum::http::StatusCode,
        axum::http::HeaderMap,
        axum::body::Bytes,
    ),
    String,
> {
    let (counts, client, upstream) = &*state;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = client.request(method, format!("{upstream}{path}"));
    for (name, value) in &headers {
        if name != axum::http::header::HOST && name != axum::http::header::CONTENT_LENGTH {
            request = request.header(name, value);
        }
    }
    let answer = request
        .body(body.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = answer.status();
    let mut out = axum::http::HeaderMap::new();
    for (name, value) in answer.headers() {
        if name != axum::http::header::CONTENT_LENGTH
            && name != axum::http::header::TRANSFER_ENCODING
        {
            out.insert(name, value.clone());
        }
    }
    let bytes = answer.bytes().await.map_err(|e| e.to_string())?;
    if uri.path().ends_with("/_bulk") && status.is_success() {
        let (sent, acked) = acknowledged(&body, &bytes, &counts.needle);
        counts
            .writes
            .fetch_add(acked.len() as u64, std::sync::atomic::Ordering::SeqCst);
        let mut ids = counts.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.0.extend(sent);
        ids.1.extend(acked);
    }
    Ok((status, out, bytes))
}

/// The ids of the bulk items into an index containing `needle` (sent), and of those the
/// store answered with 2xx (acknowledged). The index and id of each item are read from the
/// request's action lines (answers may be trimmed with `filter_path`), in order with the
/// answer's items.
fn acknowledged(request: &[u8], answer: &[u8], needle: &str) -> (Vec<String>, Vec<String>) {
    let mut counted = Vec::new();
    let mut lines = request
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    while let Some(line) = lines.next() {
        let Ok(serde_json::Value::Object(action)) = serde_json::from_slice(line) else {
            return Default::default();
        };
        let Some((op, meta)) = action.iter().next() else {
            return Default::default();
        };
        counted.push(
            meta["_index"]
                .as_str()
                .is_some_and(|i| i.contains(needle))
                .then(|| meta["_id"].as_str().unwrap_or("").to_string()),
        );
        if op != "delete" {
            lines.next();
        }
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(answer) else {
        return Default::default();
    };
    let items = value["items"].as_array().cloned().unwrap_or_default();
    if items.len() != counted.len() {
        return Default::default();
    }
    let sent = counted.iter().flatten().cloned().collect();
    let acked = items
        .iter()
        .zip(counted)
        .filter_map(|(item, id)| {
            let ok = item
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(|op| op["status"].as_u64())
                .is_some_and(|s| (200..300).contains(&s));
            id.filter(|_| ok)
        })
        .collect();
    (sent, acked)
}
