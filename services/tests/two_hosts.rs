//! Two hosts: two network namespaces joined by a veth pair. "VM1" runs the demo services and
//! the test client; "VM2" runs tansu, `dlog up --kafka` (the bridge, both stages and the
//! store) and, in front of its bridge, rotel standing in for the OpenTelemetry Collector with
//! the settings of `deploy/etc/default/dlog-rotel`. It shows that:
//! * records cross the link: every request's trace is stored on VM2, its spans from the
//!   client and the three services;
//! * W3C propagation holds: each service's server span is the child of its caller's client
//!   span, across processes;
//! * cutting the link makes the SDK drop and count, never block: the services keep answering
//!   every request at once, and their shutdown reports count what was not delivered;
//! * once the link is back (the services' heartbeats arrive again), everything sent after it
//!   arrives.
//!
//! Root can make namespaces on these machines, so the test fails when it cannot;
//! `DLOG_SKIP_NETNS_TESTS=1` is the only way to skip it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dlog_storage::{open_store, Store, StoreConfig, TimeRange, TraceQuery};

const VM1_ADDR: &str = "10.253.0.1";
const VM2_ADDR: &str = "10.253.0.2";
/// Every request enters at service-a, so every trace spans the client and the three services.
const THROUGH_A: &str = "--target=service-a=http://127.0.0.1:5000/work";

fn run(cmd: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("{}: {e}", cmd.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces and the veth pair between them; removed on drop with everything in them.
struct Hosts {
    vm1: String,
    vm2: String,
    vm2_link: String,
    children: Vec<Child>,
}

impl Hosts {
    fn create() -> Result<Hosts, String> {
        let tag = &format!("{:08x}", rand::random::<u32>())[..6];
        let hosts = Hosts {
            vm1: format!("dlog-vm1-{tag}"),
            vm2: format!("dlog-vm2-{tag}"),
            vm2_link: format!("dv2{tag}"),
            children: Vec::new(),
        };
        let vm1_link = format!("dv1{tag}");
        run(&["ip", "netns", "add", &hosts.vm1])?;
        run(&["ip", "netns", "add", &hosts.vm2])?;
        run(&[
            "ip",
            "link",
            "add",
            &vm1_link,
            "type",
            "veth",
            "peer",
            "name",
            &hosts.vm2_link,
        ])?;
        run(&["ip", "link", "set", &vm1_link, "netns", &hosts.vm1])?;
        run(&["ip", "link", "set", &hosts.vm2_link, "netns", &hosts.vm2])?;
        for (ns, link, addr) in [
            (&hosts.vm1, &vm1_link, VM1_ADDR),
            (&hosts.vm2, &hosts.vm2_link, VM2_ADDR),
        ] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                link,
            ])?;
            run(&["ip", "-n", ns, "link", "set", link, "up"])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    /// A command run inside namespace `ns`.
    fn command(ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c.stdin(Stdio::null());
        c
    }

    fn spawn(&mut self, mut command: Command) -> usize {
        self.children.push(command.spawn().expect("spawn"));
        self.children.len() - 1
    }

    /// The link goes down on VM2's side: VM1 loses carrier and its packets go nowhere.
    fn cut(&self) {
        run(&["ip", "-n", &self.vm2, "link", "set", &self.vm2_link, "down"]).unwrap();
    }

    fn restore(&self) {
        run(&["ip", "-n", &self.vm2, "link", "set", &self.vm2_link, "up"]).unwrap();
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting a namespace deletes its end of the veth pair, and so the pair.
        let _ = run(&["ip", "netns", "del", &self.vm1]);
        let _ = run(&["ip", "netns", "del", &self.vm2]);
    }
}

/// Waits until something accepts connections on `addr:port` inside namespace `ns`.
fn wait_port(ns: &str, addr: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "bash",
        "-c",
        &format!("echo > /dev/tcp/{addr}/{port}"),
    ])
    .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr}:{port} in {ns}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `KEY=VALUE` lines of an env file.
fn env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// rotel's binary, inside its installed Python package (scripts/install-test-deps.sh).
fn rotel_binary() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import rotel,os;print(os.path.dirname(rotel.__file__))",
        ])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "rotel is not installed: run scripts/install-test-deps.sh"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("rotel-agent")
}

fn tansu() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU_BIN") {
        return PathBuf::from(path);
    }
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/tansu");
    if home.is_file() {
        return home;
    }
    PathBuf::from("tansu")
}

/// The `dlog` binary next to this package's binaries (built by `cargo test --workspace`);
/// built here when this package's tests run alone.
fn dlog_binary() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_service-a")).parent().unwrap();
    let dlog = dir.join("dlog");
    if !dlog.is_file() {
        let target_dir = dir.parent().unwrap();
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "dlog", "--bin", "dlog"])
            .env("CARGO_TARGET_DIR", target_dir)
            .status()
            .expect("run cargo build -p dlog");
        assert!(status.success(), "cargo build -p dlog failed");
    }
    dlog
}

/// Reads a child's stderr on a thread, passing on the lines that start with `prefix`.
fn lines_starting(child: &mut Child, prefix: &'static str) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with(prefix) {
                let _ = tx.send(line);
            }
        }
    });
    rx
}

fn client(vm1: &str, args: &[&str]) -> Output {
    let output = Hosts::command(vm1, Path::new(env!("CARGO_BIN_EXE_test-client")))
        .args(["--endpoint", &format!("http://{VM2_ADDR}:4317")])
        .args(["--viewer", "http://viewer.invalid"])
        .args(args)
        .output()
        .unwrap();
    println!(
        "test-client {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// (requests, success %) of the table's `all` row, or of its only row.
fn table_totals(stdout: &str) -> (u64, f64) {
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.contains("requests sent"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let row = rows
        .iter()
        .find(|r| r[0] == "all")
        .or(rows.first())
        .unwrap_or_else(|| panic!("no table in {stdout}"));
    // The `all` row has no endpoint column.
    let at = if row[0] == "all" { 1 } else { 2 };
    (
        row[at].parse().unwrap(),
        row[at + 1].trim_end_matches('%').parse().unwrap(),
    )
}

fn now_nanos() -> u64 {
    dlog_storage::now_unix_nano()
}

/// The traces the test client started since `since`, with at least `spans` spans each.
async fn client_traces(store: &dyn Store, since: u64) -> Vec<String> {
    store
        .find_traces(&TraceQuery {
            service: Some("test-client".into()),
            time: TimeRange {
                start_unix_nano: Some(since),
                end_unix_nano: None,
            },
            limit: 1000,
            ..TraceQuery::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.trace_id)
        .collect()
}

/// Polls until each of the client's traces since `since` holds spans of the client and the
/// three services, and there are `expected` of them.
async fn wait_for_complete_traces(store: &dyn Store, since: u64, expected: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids = client_traces(store, since).await;
        let mut complete = 0;
        for id in &ids {
            let spans = store.get_trace(id).await.unwrap();
            let has = |service: &str| spans.iter().any(|s| s.service.name == service);
            if ["test-client", "service-a", "service-b", "service-c"]
                .iter()
                .all(|s| has(s))
            {
                complete += 1;
            }
        }
        if ids.len() >= expected && complete >= expected {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "{complete} of {expected} traces complete on VM2 ({} found)",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_export_across_the_link_drop_and_count_when_it_is_cut_and_recover() {
    if std::env::var("DLOG_SKIP_NETNS_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipped: DLOG_SKIP_NETNS_TESTS=1");
        return;
    }
    let mut hosts = Hosts::create().unwrap_or_else(|e| {
        panic!("cannot make the two network namespaces (root is needed; DLOG_SKIP_NETNS_TESTS=1 skips this test): {e}")
    });
    let (vm1, vm2) = (hosts.vm1.clone(), hosts.vm2.clone());
    let data = tempfile::tempdir().unwrap();

    // VM2: the broker, then dlog up with Kafka between its bridge and its stages.
    let mut broker = Hosts::command(&vm2, &tansu());
    let url = format!("tcp://{VM2_ADDR}:9092");
    broker
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    hosts.spawn(broker);
    wait_port(&vm2, VM2_ADDR, 9092);
    // The bridge on VM2's loopback, behind rotel, as in deploy/etc/dlog/bridge.toml.
    let mut up = Hosts::command(&vm2, &dlog_binary());
    up.arg("--data-dir")
        .arg(data.path())
        .args(["up", "--kafka", &format!("{VM2_ADDR}:9092")])
        .args([
            "--otlp-grpc",
            "127.0.0.1:14317",
            "--otlp-http",
            "127.0.0.1:14318",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let up_index = hosts.spawn(up);
    let ready = lines_starting(&mut hosts.children[up_index], "dlog is up");
    let line = ready
        .recv_timeout(Duration::from_secs(60))
        .expect("dlog up on VM2 started");
    assert!(
        line.contains(&format!("Kafka brokers {VM2_ADDR}:9092")),
        "{line}"
    );
    let mut rotel = Hosts::command(&vm2, &rotel_binary());
    rotel
        .arg("start")
        .envs(env_file(&root().join("deploy/etc/default/dlog-rotel")))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    hosts.spawn(rotel);
    wait_port(&vm2, VM2_ADDR, 4317);

    // VM1: the services, exporting to VM2, with small SDK queues and a short export budget
    // so that a cut of a few seconds overflows them.
    let endpoint = format!("http://{VM2_ADDR}:4317");
    let mut reports = Vec::new();
    for (exe, port) in [
        (env!("CARGO_BIN_EXE_service-c"), 5002),
        (env!("CARGO_BIN_EXE_service-b"), 5001),
        (env!("CARGO_BIN_EXE_service-a"), 5000),
    ] {
        let mut service = Hosts::command(&vm1, Path::new(exe));
        service
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--endpoint", &endpoint, "--heartbeat-secs", "1"])
            .env("DEMO_LATENCY_SCALE", "0.01")
            .env("DEMO_ERROR_RATE", "0")
            .env("DEMO_OVERLOAD_ERROR_RATE", "0")
            .env("DEMO_OTLP_QUEUE_CAPACITY", "256")
            .env("DEMO_OTLP_EXPORT_TIMEOUT_MS", "1000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let index = hosts.spawn(service);
        reports.push((
            index,
            lines_starting(&mut hosts.children[index], "exported "),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The client's health check names any service not up yet (exit code 2).
        let out = client(&vm1, &["--no-telemetry", "--requests", "1"]);
        if out.status.success() {
            break;
        }
        assert_eq!(out.status.code(), Some(2));
        assert!(
            Instant::now() < deadline,
            "the services never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let store = open_store(&StoreConfig::embedded(data.path().join("store")))
        .await
        .unwrap();

    // 1. Across the link: each request's trace reaches VM2 whole, parents linked.
    let since = now_nanos();
    let out = client(&vm1, &[THROUGH_A, "--rate", "10", "--requests", "30"]);
    assert!(out.status.success());
    assert_eq!(
        table_totals(&String::from_utf8_lossy(&out.stdout)),
        (30, 100.0)
    );
    let ids = wait_for_complete_traces(store.as_ref(), since, 30).await;
    let spans = store.get_trace(&ids[0]).await.unwrap();
    for (caller, callee) in [
        ("test-client", "service-a"),
        ("service-a", "service-b"),
        ("service-a", "service-c"),
    ] {
        let server = spans
            .iter()
            .find(|s| {
                s.service.name == callee
                    && s.parent_span_id.is_some()
                    && s.name.starts_with("GET /")
            })
            .unwrap_or_else(|| panic!("no server span of {callee}: {spans:?}"));
        let parent = spans
            .iter()
            .find(|s| Some(&s.span_id) == server.parent_span_id.as_ref())
            .unwrap_or_else(|| panic!("the parent of {callee}'s server span is missing"));
        assert_eq!(
            parent.service.name, caller,
            "{callee}'s server span is the child of {caller}'s client span"
        );
    }

    // 2. The link is cut: the services answer every request at once all the same, while
    // their exports fail and their small queues overflow.
    hosts.cut();
    let out = client(
        &vm1,
        &[
            "--no-telemetry",
            "--rate",
            "50",
            "--duration-secs",
            "5",
            "--timeout-secs",
            "2",
        ],
    );
    assert!(out.status.success());
    let (sent, success) = table_totals(&String::from_utf8_lossy(&out.stdout));
    assert!(sent >= 240, "{sent}");
    assert_eq!(
        success, 100.0,
        "every request answered within 2 s during the cut"
    );

    // 3. The link is back. Once every service's heartbeat arrives again, everything sent
    // from then on arrives.
    hosts.restore();
    let restored = now_nanos();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = store
            .service_status(&dlog_storage::StatusQuery::default())
            .await
            .unwrap();
        let fresh = |service: &str| {
            status
                .iter()
                .any(|s| s.entry.service == service && s.entry.last_heartbeat_unix_nano > restored)
        };
        if ["service-a", "service-b", "service-c"]
            .iter()
            .all(|s| fresh(s))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "heartbeats did not resume: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let since = now_nanos();
    let out = client(&vm1, &[THROUGH_A, "--rate", "10", "--requests", "30"]);
    assert!(out.status.success());
    assert_eq!(
        table_totals(&String::from_utf8_lossy(&out.stdout)),
        (30, 100.0)
    );
    wait_for_complete_traces(store.as_ref(), since, 30).await;

    // The services' own accounts: records were lost to the cut, counted, not hidden.
    let mut lost = 0;
    for (index, report) in reports {
        let pid = hosts.children[index].id();
        // `ip netns exec` runs the service in place of itself: this is the service.
        run(&["kill", "-TERM", &pid.to_string()]).unwrap();
        let line = report
            .recv_timeout(Duration::from_secs(30))
            .expect("a shutdown report");
        println!("{line}");
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "delivered:").unwrap();
        lost += words[at + 1].parse::<u64>().unwrap();
    }
    assert!(lost > 0, "the cut cost records, and the SDK counted them");
}
