//! Kafka record values as the indexer and the alerter decode them: `otlp_proto` or
//! `otlp_json`, traces or logs (picked by the first byte), then flattened into spans, log
//! entries and heartbeats, with their document ids, as the stages do.
#![no_main]

use dlog_core::encoding::{decode_logs, decode_traces, Encoding};
use dlog_core::model::{logs_from_request, spans_from_request, LogItem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, payload)) = data.split_first() else {
        return;
    };
    let encoding = if which & 2 == 0 {
        Encoding::OtlpProto
    } else {
        Encoding::OtlpJson
    };
    if which & 1 == 0 {
        let Ok(request) = decode_traces(encoding, payload) else {
            return;
        };
        let spans = spans_from_request(&request);
        let expected: usize = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        assert_eq!(spans.len(), expected);
        for span in &spans {
            let _ = (span.doc_id(), span.duration_nanos(), span.peer_service());
            assert!(span.trace_id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    } else {
        let Ok(request) = decode_logs(encoding, payload) else {
            return;
        };
        let items = logs_from_request(&request);
        let expected: usize = request
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        assert_eq!(items.len(), expected);
        for item in &items {
            match item {
                LogItem::Log(log) => {
                    let _ = (
                        log.doc_id(),
                        log.attr_f64("duration_ms"),
                        log.attr_bool("ok"),
                        log.is_service_call(),
                    );
                }
                LogItem::Heartbeat(h) => {
                    let _ = h.doc_id();
                }
            }
        }
    }
});
