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
    child: std::sync::Mutex<Child>,
    port: u16,
    options: std::sync::Mutex<KafkaOptions>,
}

/// How a [`Kafka`] broker keeps its data and whom it lets in.
#[derive(Debug, Clone, Default)]
pub struct KafkaOptions {
    /// A SQLite file (tansu's `sqlite://` storage, built with its `libsql` feature): topics,
    /// records, offsets and users survive a restart. `None`: memory, lost with the process.
    /// Its name must be lowercase (tansu reads it as a URL's host).
    pub durable: Option<PathBuf>,
    /// The port the broker names to clients in its metadata, when they are to reach it
    /// through something in front of it (a TLS proxy: tansu 0.6.0's own `--cert` and `--key`
    /// cannot be given together). `None`: its own port.
    pub advertised_port: Option<u16>,
    /// Clients must authenticate with SASL (tansu offers SCRAM-SHA-256 and -512).
    pub authentication: bool,
}

impl Kafka {
    /// Starts a broker with in-memory storage and waits until it accepts connections.
    pub fn start() -> Result<Kafka> {
        Kafka::start_with(KafkaOptions::default())
    }

    /// Starts a broker as `options` say and waits until it accepts connections.
    pub fn start_with(options: KafkaOptions) -> Result<Kafka> {
        Kafka::start_on(free_port()?, options)
    }

    /// [`Kafka::start_with`] on loopback port `port`.
    pub fn start_on(port: u16, options: KafkaOptions) -> Result<Kafka> {
        let child = Kafka::spawn(port, &options)?;
        let kafka = Kafka {
            brokers: format!("127.0.0.1:{port}"),
            child: std::sync::Mutex::new(child),
            port,
            options: std::sync::Mutex::new(options),
        };
        wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20))?;
        Ok(kafka)
    }

    fn spawn(port: u16, options: &KafkaOptions) -> Result<Child> {
        let bin = find_binary("TANSU_BIN", "tansu", &[])?;
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!(
            "tcp://127.0.0.1:{}",
            options.advertised_port.unwrap_or(port)
        );
        // tansu opens `sqlite://NAME` as NAME in its working directory (whatever the path).
        let storage = match &options.durable {
            Some(file) => format!(
                "sqlite://{}",
                file.file_name()
                    .and_then(|n| n.to_str())
                    .context("a durable broker's file needs a UTF-8 name")?
            ),
            None => "memory://tansu/".to_string(),
        };
        let mut command = Command::new(&bin);
        if let Some(dir) = options
            .durable
            .as_ref()
            .and_then(|f| f.parent())
            .filter(|d| !d.as_os_str().is_empty())
        {
            command.current_dir(dir);
        }
        command.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
            "--storage-engine",
            &storage,
        ]);
        if options.authentication {
            command.arg("--authentication");
        }
        if options.durable.is_none() {
            return command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("start {}", bin.display()));
        }
        // A durable broker's log is kept next to its file; one that cannot start says why
        // there and exits at once (a storage engine this build lacks).
        let Some(file) = &options.durable else {
            unreachable!("a memory broker returned above")
        };
        let log_path = file.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(300) {
            if let Some(status) = child.try_wait()? {
                let why = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!(
                    "tansu exited ({status}) with storage {storage}: {why}\n(durable storage \
                     needs tansu built with its libsql feature: run `bash .ci/run` once)"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child)
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Kills the broker with SIGKILL, as a crash would, and waits until it is gone.
    pub fn kill(&self) -> Result<()> {
        let mut child = self.child();
        let _ = signal(child.id(), "-CONT");
        child.kill().context("kill tansu")?;
        child.wait().context("wait for tansu")?;
        Ok(())
    }

    /// Starts the broker again on the same port and storage (after [`Kafka::kill`]) and waits
    /// until it accepts connections.
    pub fn start_again(&self) -> Result<()> {
        let options = self
            .options
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.start_again_with(options)
    }

    /// [`Kafka::start_again`] with other options (TLS, authentication) on the same storage.
    pub fn start_again_with(&self, options: KafkaOptions) -> Result<()> {
        {
            let mut child = self.child();
            if child.try_wait()?.is_none() {
                bail!("the broker is still running: kill() it first");
            }
            *child = Kafka::spawn(self.port, &options)?;
        }
        *self.options.lock().unwrap_or_else(|e| e.into_inner()) = options;
        wait_for_port(([127, 0, 0, 1], self.port).into(), Duration::from_secs(20))
    }

    /// Adds a SCRAM user through the broker (`tansu user create`); on a broker that requires
    /// authentication this is refused, so users are added before
    /// ([`KafkaOptions::authentication`] on a durable broker restarted).
    pub fn create_scram_user(&self, name: &str, password: &str, mechanism: &str) -> Result<()> {
        let bin = find_binary("TANSU_BIN", "tansu", &[])?;
        let out = Command::new(&bin)
            .args([
                "user",
                "create",
                "--broker",
                &format!("tcp://{}", self.brokers),
                "--mechanism",
                mechanism,
                name,
                password,
            ])
            .output()
            .context("run tansu user create")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("ERROR") || stderr.contains("Error") {
            bail!("tansu user create {name} failed: {stderr}");
        }
        Ok(())
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
        signal(self.pid(), "-STOP")
    }

    /// Thaws a paused broker (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        signal(self.pid(), "-CONT")
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child().id()
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let mut child = self.child();
        let _ = signal(child.id(), "-CONT");
        let _ = child.kill();
        let _ = child.wait();
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
    done: impl FnMut(&[RawRecord]) -> bool,
) -> Result<Vec<RawRecord>> {
    read_topic_with(brokers, &Default::default(), topic, within, done)
}

/// [`read_topic`] with more librdkafka properties (TLS, SASL).
pub fn read_topic_with(
    brokers: &str,
    properties: &std::collections::BTreeMap<String, String>,
    topic: &str,
    within: Duration,
    mut done: impl FnMut(&[RawRecord]) -> bool,
) -> Result<Vec<RawRecord>> {
    let mut config = ClientConfig::new();
    for (k, v) in properties {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config
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
