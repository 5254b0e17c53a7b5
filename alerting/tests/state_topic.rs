//! The state topic against a real broker (tansu): checkpoints larger than a Kafka message
//! are chunked and read back whole; the newest complete checkpoint of the group is found
//! from the end of a topic that holds hundreds of older ones and other groups' (tansu does
//! not compact), passing over one a crash cut short, also when many other records follow it or its chunks
//! straddle two reads; a later holder's checkpoint wins over a higher number of an earlier
//! one; unreadable or hostile newer checkpoints are passed over for the next older one.

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
    topic
        .save(state.epoch, state.checkpoint, &chunks)
        .await
        .unwrap();
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
    ours.save_first(0, 302, &cut, 1).await.unwrap();

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
    topic.save(0, 2, &[b"not gzip".to_vec()]).await.unwrap();
    // Valid, but numbered as another checkpoint than the one it holds.
    let other = topic
        .encode(&serde_json::to_vec(&state(9, 1)).unwrap())
        .unwrap();
    topic.save(0, 3, &other).await.unwrap();
    // A chunk larger than a writer ever makes.
    topic
        .save(0, 4, &[vec![0x1f; CHUNK_BYTES + 1]])
        .await
        .unwrap();
    let loaded = load(&topic)
        .await
        .expect("the readable checkpoint was not found");
    assert_eq!(loaded.checkpoint, 1);
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        serde_json::to_value(&good).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_found_behind_other_records_and_across_reads() {
    let kafka = Kafka::start().unwrap();

    // More records of another group after it than one read takes (512).
    let name = unique_name("alerter_state");
    let ours = StateTopic::open(client(&kafka), &name, "team-a")
        .await
        .unwrap();
    let theirs = StateTopic::open(client(&kafka), &name, "team-b")
        .await
        .unwrap();
    let big = state(7, 4_000);
    save(&ours, &big).await;
    for checkpoint in 1..=600 {
        save(&theirs, &state(checkpoint, 0)).await;
    }
    assert_eq!(load(&ours).await.expect("not found").checkpoint, 7);

    // Its chunks straddle two reads: chunk 0 in the earlier one.
    let name = unique_name("alerter_state");
    let ours = StateTopic::open(client(&kafka), &name, "team-a")
        .await
        .unwrap();
    let theirs = StateTopic::open(client(&kafka), &name, "team-b")
        .await
        .unwrap();
    let chunks = save(&ours, &big).await;
    assert!(chunks >= 3);
    // Offsets start at 0: 513 records in all put the first read at offsets 1..513.
    for checkpoint in 1..=(513 - chunks as u64) {
        save(&theirs, &state(checkpoint, 0)).await;
    }
    let loaded = load(&ours).await.expect("not found");
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        serde_json::to_value(&big).unwrap()
    );
}

/// Regression: checkpoints were ordered by number alone, so a holder cut off from the group
/// (or one that resumed from a stale file) could outnumber its successor's checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_holders_checkpoint_wins_over_a_higher_number_of_an_earlier_one() {
    let kafka = Kafka::start().unwrap();
    let name = unique_name("alerter_state");
    let successor = StateTopic::open(client(&kafka), &name, "team-a")
        .await
        .unwrap();
    let stale = StateTopic::open(client(&kafka), &name, "team-a")
        .await
        .unwrap();
    let later = StageState {
        epoch: 40,
        ..state(10, 1)
    };
    save(&successor, &later).await;
    // Written after it by the holder before (a lower lease epoch), with a higher number.
    save(
        &stale,
        &StageState {
            epoch: 12,
            ..state(50, 1)
        },
    )
    .await;
    let loaded = load(&successor).await.expect("not found");
    assert_eq!((loaded.epoch, loaded.checkpoint), (40, 10));
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        serde_json::to_value(&later).unwrap()
    );
}

/// A stray chunk of a high checkpoint whose first chunk never comes (written by anyone who
/// can write the topic) does not hide the good checkpoint below it: the load stops a little
/// past the good one instead of reading (and holding) the whole topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_chunk_without_its_first_does_not_hide_the_checkpoint_below() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let kafka = Kafka::start().unwrap();
    let name = unique_name("alerter_state");
    let ours = StateTopic::open(client(&kafka), &name, "team-a")
        .await
        .unwrap();
    let theirs = StateTopic::open(client(&kafka), &name, "team-b")
        .await
        .unwrap();
    // More records below than one read takes (512), so the stray's first chunk may lie in an
    // earlier read.
    for checkpoint in 1..=520 {
        save(&theirs, &state(checkpoint, 0)).await;
    }
    save(&ours, &state(4, 1)).await;
    let good = state(5, 2);
    save(&ours, &good).await;
    let producer: FutureProducer = client(&kafka).create().unwrap();
    let headers = [
        ("dlog.state.group", "team-a"),
        ("dlog.state.checkpoint", "999999"),
        ("dlog.state.chunk", "1"),
        ("dlog.state.chunks", "2"),
        ("dlog.state.writer", "stray"),
        ("dlog.state.epoch", "999999"),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    });
    producer
        .send(
            FutureRecord::to(&name)
                .partition(0)
                .key("team-a")
                .payload(&[0x1f_u8; 64][..])
                .headers(headers),
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap();

    let loaded = load(&ours)
        .await
        .expect("the good checkpoint was not found");
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        serde_json::to_value(&good).unwrap()
    );
}
