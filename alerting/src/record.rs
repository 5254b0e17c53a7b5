//! Kafka records → the flattened records the engine evaluates.

use dlog_core::encoding::{decode_logs, decode_traces, DecodeError, Signal};
use dlog_core::model::{self, Heartbeat, LogEntry, LogItem, SpanRecord};
use dlog_core::source::RawRecord;

/// One span, log record or heartbeat, as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A span (from `trace_logs`).
    Span(SpanRecord),
    /// A log record, `service.call` events included (from `service_logs`).
    Log(LogEntry),
    /// A registration or heartbeat (from `heartbeat_logs`).
    Heartbeat(Heartbeat),
}

impl From<LogItem> for Record {
    fn from(item: LogItem) -> Self {
        match item {
            LogItem::Log(l) => Record::Log(l),
            LogItem::Heartbeat(h) => Record::Heartbeat(h),
        }
    }
}

/// Decodes one Kafka record into engine records, appending them to `out`. The encoding
/// comes from the record's header; the signal from the topic it was read from.
pub fn decode_into(
    raw: &RawRecord,
    signal: Signal,
    out: &mut Vec<Record>,
) -> Result<(), DecodeError> {
    let encoding = raw.encoding()?;
    match signal {
        Signal::Traces => {
            let request = decode_traces(encoding, &raw.payload)?;
            out.extend(
                model::spans_from_request(&request)
                    .into_iter()
                    .map(Record::Span),
            );
        }
        Signal::Logs => {
            let request = decode_logs(encoding, &raw.payload)?;
            out.extend(
                model::logs_from_request(&request)
                    .into_iter()
                    .map(Record::from),
            );
        }
    }
    Ok(())
}
