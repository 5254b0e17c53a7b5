//! One alerter per consumer group, against a real broker (tansu) and the real binary: a
//! second `dlog-alerter` in the group of a running one refuses to start, naming the group
//! and the running one; once the running one is killed, a new one takes the group over
//! within a bounded time.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dlog_testkit::{unique_name, Kafka};

/// An alerter process whose stderr goes to a file.
struct Alerter {
    child: Child,
    log: PathBuf,
}

impl Alerter {
    fn start(dir: &Path, name: &str, brokers: &str, group: &str, extra: &[&str]) -> Alerter {
        let log = dir.join(format!("{name}.log"));
        let state = dir.join(format!("{name}-state"));
        let child = Command::new(env!("CARGO_BIN_EXE_dlog-alerter"))
            .args([
                "--kafka-brokers",
                brokers,
                "--group-id",
                group,
                "--admin",
                "127.0.0.1:0",
                "--state-dir",
                state.to_str().unwrap(),
                "--create-topics",
                "--terminal",
                "false",
            ])
            .args(extra)
            // The lease's rejoins are logged at debug level.
            .env(
                "DLOG_ALERTER_LOG",
                "info,dlog_alerting::lease=debug,rdkafka=warn",
            )
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start dlog-alerter");
        Alerter { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls its log for `needle` until `within`; panics with the log otherwise.
    fn wait_log(&mut self, needle: &str, within: Duration) -> Duration {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.log().contains(needle) {
                return started.elapsed();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "alerter exited ({status}) before logging `{needle}`:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "alerter did not log `{needle}` within {within:?}:\n{}",
            self.log()
        );
    }

    /// Polls its log until one of `needles` shows, until `within`; the first one found.
    fn wait_any<'a>(&mut self, needles: &[&'a str], within: Duration) -> &'a str {
        let started = Instant::now();
        while started.elapsed() < within {
            let log = self.log();
            if let Some(found) = needles.iter().find(|n| log.contains(**n)) {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "alerter logged none of {needles:?} within {within:?}:\n{}",
            self.log()
        );
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("alerter still running after {within:?}:\n{}", self.log());
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Alerter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_second_alerter_in_the_group_refuses_and_a_successor_takes_over_after_a_crash() {
    let kafka = Kafka::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let group = unique_name("alerters");
    let lease_topic = unique_name("lease");
    let lease = ["--lease-topic", lease_topic.as_str()];

    let mut first = Alerter::start(dir.path(), "first", &kafka.brokers, &group, &lease);
    first.wait_log("alerter running", Duration::from_secs(40));
    let first_pid = first.child.id();

    // A second one in the same group joins the lease group, gets nothing, waits its
    // lease_wait_ms for a holder that might be dead, and refuses.
    let mut second = Alerter::start(
        dir.path(),
        "second",
        &kafka.brokers,
        &group,
        &[&lease[..], &["--lease-wait-ms", "2000"]].concat(),
    );
    let status = second.wait_exit(Duration::from_secs(60));
    let said = second.log();
    assert!(!status.success(), "the second alerter started:\n{said}");
    assert!(
        said.contains(&format!("consumer group `{group}`")),
        "the refusal does not name the group:\n{said}"
    );
    assert!(
        said.contains(&format!("pid {first_pid} on host {}", host_name())),
        "the refusal does not name the running alerter (pid {first_pid}):\n{said}"
    );
    assert!(
        !said.contains("alerter running"),
        "the second alerter evaluated before refusing:\n{said}"
    );
    assert!(
        first.running(),
        "the first alerter stopped:\n{}",
        first.log()
    );

    // A holder that dies (kill -9: it cannot leave the group) leaves after its session
    // timeout; a successor waiting for the lease then takes it.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let started = Instant::now();
    let mut third = Alerter::start(dir.path(), "third", &kafka.brokers, &group, &lease);
    third.wait_log("alerter running", Duration::from_secs(90));
    println!(
        "successor took the lease {:.1} s after the holder was killed",
        started.elapsed().as_secs_f64()
    );
    assert!(third.running());
    drop(kafka);
}

#[test]
fn a_different_group_runs_alongside() {
    let kafka = Kafka::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lease_topic = unique_name("lease");
    let lease = ["--lease-topic", lease_topic.as_str()];
    let mut one = Alerter::start(
        dir.path(),
        "one",
        &kafka.brokers,
        &unique_name("team-a"),
        &lease,
    );
    let mut two = Alerter::start(
        dir.path(),
        "two",
        &kafka.brokers,
        &unique_name("team-b"),
        &lease,
    );
    one.wait_log("alerter running", Duration::from_secs(40));
    two.wait_log("alerter running", Duration::from_secs(40));
}

#[test]
fn a_standby_stands_by_longer_than_a_join_takes_and_still_takes_over() {
    let kafka = Kafka::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let group = unique_name("alerters");
    let lease_topic = unique_name("lease");
    let state_topic = unique_name("state");
    let args = [
        "--lease-topic",
        lease_topic.as_str(),
        "--state-topic",
        state_topic.as_str(),
        "--standby",
        "true",
    ];
    let mut active = Alerter::start(dir.path(), "active", &kafka.brokers, &group, &args);
    active.wait_log("alerter running", Duration::from_secs(40));
    let mut standby = Alerter::start(dir.path(), "standby", &kafka.brokers, &group, &args);
    // (Or it took the lease at once: judged below.)
    standby.wait_any(&["standing by", "alerter running"], Duration::from_secs(40));

    // A standby joins the lease group again after every session; a join must complete within
    // 3 sessions and 10 s (28 s with the default 6 s session), which is no limit on how long
    // it stands by.
    let stood_by = Instant::now();
    while stood_by.elapsed() < Duration::from_secs(32) {
        assert!(
            standby.running(),
            "the standby stopped while standing by:\n{}",
            standby.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // While the holder renews its record, the standby does not join again.
    assert!(
        !standby.log().contains("joining the lease group again"),
        "the standby joined the lease group again while its holder was alive:\nactive:\n{}\nstandby:\n{}",
        active.log(),
        standby.log()
    );
    // On tansu 0.6 the standby's first join now and then takes the partition from the live
    // holder; the handover must then be clean: the holder saw the revocation and stopped.
    if standby.log().contains("alerter running") || !active.running() {
        println!("the standby's first join took the lease from its live holder");
        active.wait_exit(Duration::from_secs(30));
        assert!(
            active.log().contains("the alerter lease was revoked"),
            "the lease moved without its holder stopping:\nactive:\n{}\nstandby:\n{}",
            active.log(),
            standby.log()
        );
    } else {
        active.child.kill().unwrap();
        active.child.wait().unwrap();
    }
    standby.wait_log("alerter running", Duration::from_secs(60));
    assert!(standby.running());
}

/// Regression: a standby judged its holder silent by its own `lease_session_timeout_ms`, so
/// next to a holder with a longer one (renewing less often) it joined the lease group again
/// while the holder lived, and on tansu 0.6 such a join now and then takes the lease away.
#[test]
fn a_standby_judges_its_holder_by_the_holders_own_renewal_interval() {
    let kafka = Kafka::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let group = unique_name("alerters");
    let lease_topic = unique_name("lease");
    let state_topic = unique_name("state");
    let args = [
        "--lease-topic",
        lease_topic.as_str(),
        "--state-topic",
        state_topic.as_str(),
        "--standby",
        "true",
    ];
    // Renews every 12 s; the standby's own setting (6 s) would call it silent after 10 s.
    let slow: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--lease-session-timeout-ms", "24000"])
        .collect();
    let mut active = Alerter::start(dir.path(), "active", &kafka.brokers, &group, &slow);
    active.wait_log("alerter running", Duration::from_secs(40));
    let mut standby = Alerter::start(dir.path(), "standby", &kafka.brokers, &group, &args);
    if standby.wait_any(&["standing by", "alerter running"], Duration::from_secs(40))
        == "alerter running"
    {
        // The first join took the lease (see above): nothing to judge here.
        println!("the standby's first join took the lease from its live holder");
        return;
    }
    let stood_by = Instant::now();
    while stood_by.elapsed() < Duration::from_secs(20) {
        assert!(
            !standby.log().contains("joining the lease group again"),
            "the standby joined the lease group again while its holder was alive:\n{}",
            standby.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(active.running(), "{}", active.log());
}

/// A holder that stops gracefully leaves a release as the group's last lease record, after
/// all its renewals.
#[test]
fn a_graceful_holder_records_its_release_last() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let kafka = Kafka::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let group = unique_name("alerters");
    let lease_topic = unique_name("lease");
    let args = ["--lease-topic", lease_topic.as_str()];
    let mut holder = Alerter::start(dir.path(), "holder", &kafka.brokers, &group, &args);
    holder.wait_log("alerter running", Duration::from_secs(40));
    // A few renewals (every 3 s) go out first.
    std::thread::sleep(Duration::from_secs(7));
    let status = Command::new("kill")
        .args(["-TERM", &holder.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        holder.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        holder.log()
    );

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", unique_name("reader"))
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&lease_topic, 0, Offset::Beginning)
        .unwrap();
    reader.assign(&tpl).unwrap();
    let mut records: Vec<serde_json::Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "the lease topic was not read to its end"
        );
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if let Some(v) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                    .filter(|v| v["group"] == group.as_str())
                {
                    records.push(v);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            _ => {}
        }
    }
    assert!(records.len() >= 3, "no renewals: {records:#?}");
    assert_eq!(
        records.last().unwrap()["released"],
        true,
        "the last lease record is not the release: {records:#?}"
    );
    assert!(
        records[..records.len() - 1]
            .iter()
            .all(|r| r["released"] != true),
        "{records:#?}"
    );
}
