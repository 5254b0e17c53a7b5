//! The state topic against a real broker (tansu): checkpoints larger than a Kafka message
//! are chunked and read back whole; the newest complete checkpoint of the group is found
//! from the end of a topic that holds hundreds of older ones and other groups' (tansu does
//! not compact), passing over one a crash cut short; unreadable or hostile newer checkpoints are passed
//! over for the next older one.

use std::collections::BTreeSet;
use std::time::Instant;

use dlog_alerting::state::topic::{StateTopic, CHUNK_BYTES};
use dlog_alerting::state::{Pending, StageState};
use dlog_alerting::{Alert, AlertState, Severity, Transition, TransitionKind};
use dlog_testkit::{unique_name, Kafka};
use rdkafka::config::ClientConfig;

fn client(kafka: &Kafka) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    c
}

/// A state whose outbox holds `alerts` alerts with hard-to-compress summaries.
fn state(checkpoint: u64, alerts: usize) -> StageState {
    let mut seed = checkpoint.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut noise = || {
        (0..16)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                format!("{seed:016x}")
            })
            .collect::<String>()
    };
    let outbox = (0..alerts)
        .map(|i| Pending {
            transition: Transition {
                kind: TransitionKind::Fired,
                alert: Alert {
                    id: format!("{i:032x}"),
                    rule: "error_log".into(),
                    key: format!("svc-{i}"),
                    severity: Severity::Critical,
                    state: AlertState::Firing,
                    service: format!("svc-{i}"),
                    instance: None,
                    summary: noise(),
                    first_seen_unix_nano: 1,
                    last_seen_unix_nano: 2,
                    occurrences: 3,
                    example_trace_ids: vec![],
                    root_cause: None,
                    incident_id: None,
                    labels: Default::default(),
                    revision: i as u64 + 1,
                },
            },
            outputs: BTreeSet::from(["kafka".to_string()]),
        })
        .collect();
    StageState {
        outbox,
        checkpoint,
        ..Default::default()
    }
}

async fn save(topic: &StateTopic, state: &StageState) -> usize {
    let chunks = topic.encode(&serde_json::to_vec(state).unwrap()).unwrap();
    topic.save(state.checkpoint, &chunks).await.unwrap();
    chunks.len()
}

async fn load(topic: &StateTopic) -> Option<StageState> {
    let topic = topic.clone();
    tokio::task::spawn_blocking(move || topic.load_blocking())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_complete_checkpoint_is_found_from_the_end() {
    let kafka = Kafka::start().unwrap();
    let name = unique_name("alerter_state");
    let ours = StateTopic::open(client(&kafka), &name, "team-a")
        .await
        .unwrap();
    let theirs = StateTopic::open(client(&kafka), &name, "team-b")
        .await
        .unwrap();
    assert!(load(&ours).await.is_none(), "an empty topic holds no state");

    // Hundreds of older checkpoints, another group's in between.
    for checkpoint in 1..=300 {
        save(&ours, &state(checkpoint, 2)).await;
        save(&theirs, &state(checkpoint + 1000, 1)).await;
    }
    // The newest complete one is larger than a Kafka message.
    let big = state(301, 4_000);
    let chunks = save(&ours, &big).await;
    assert!(
        chunks >= 3,
        "the state took {chunks} chunks of {CHUNK_BYTES} bytes"
    );
    // Another group writes after it; then a crash cuts the next checkpoint short.
    save(&theirs, &state(2000, 1)).await;
    let cut = ours
        .encode(&serde_json::to_vec(&state(302, 4_000)).unwrap())
        .unwrap();
    assert!(cut.len() >= 2);
    ours.save_first(302, &cut, 1).await.unwrap();

    let started = Instant::now();
    let loaded = load(&ours).await.expect("no state found");
    println!(
        "state topic: loaded checkpoint {} ({} chunks) from the end of {} records in {:.0} ms",
        loaded.checkpoint,
        chunks,
        300 * 2 + chunks + 2,
        started.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(loaded.checkpoint, 301);
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        serde_json::to_value(&big).unwrap()
    );
    // The other group finds its own.
    assert_eq!(load(&theirs).await.unwrap().checkpoint, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_or_hostile_newer_checkpoints_are_passed_over_for_the_next_older_one() {
    let kafka = Kafka::start().unwrap();
    let name = unique_name("alerter_state");
    let topic = StateTopic::open(client(&kafka), &name, "team-a")
        .await
        .unwrap();
    let good = state(1, 1);
    save(&topic, &good).await;
    // Not gzip.
    topic.save(2, &[b"not gzip".to_vec()]).await.unwrap();
    // Valid, but numbered as another checkpoint than the one it holds.
    let other = topic
        .encode(&serde_json::to_vec(&state(9, 1)).unwrap())
        .unwrap();
    topic.save(3, &other).await.unwrap();
    // A chunk larger than a writer ever makes.
    topic.save(4, &[vec![0x1f; CHUNK_BYTES + 1]]).await.unwrap();
    let loaded = load(&topic)
        .await
        .expect("the readable checkpoint was not found");
    assert_eq!(loaded.checkpoint, 1);
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        serde_json::to_value(&good).unwrap()
    );
}
