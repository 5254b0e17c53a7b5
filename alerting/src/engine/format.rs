//! Small helpers the rules share to word and key their alerts.

use std::collections::{BTreeSet, VecDeque};

use dlog_core::model::SpanKind;

use super::NANOS_PER_SEC;

/// The key of a caller → callee edge.
pub(crate) fn edge_key(caller: &str, callee: &str) -> String {
    format!("{caller}->{callee}")
}

/// `svc (instance)`, or `svc` when the instance is the service or unknown.
pub(crate) fn describe_instance(service: &str, instance: Option<&str>) -> String {
    match instance {
        Some(i) if i != service => format!("{service} ({i})"),
        _ => service.to_string(),
    }
}

/// Comma-separated, in order.
pub(crate) fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(",")
}

/// A record's own time, or `now` when it has none.
pub(crate) fn nonzero(time: u64, now: u64) -> u64 {
    if time == 0 {
        now
    } else {
        time
    }
}

/// A span id in hex as a number.
pub(crate) fn parse_id(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex, 16).ok()
}

/// A span kind as the rules file names it.
pub(crate) fn span_kind(name: &str) -> Option<SpanKind> {
    Some(match name {
        "unspecified" => SpanKind::Unspecified,
        "internal" => SpanKind::Internal,
        "server" => SpanKind::Server,
        "client" => SpanKind::Client,
        "producer" => SpanKind::Producer,
        "consumer" => SpanKind::Consumer,
        _ => return None,
    })
}

/// Longest message fingerprint, in bytes.
const FINGERPRINT_MAX: usize = 120;

/// A message with its digit runs collapsed, so "timeout after 31 ms" and "timeout after
/// 42 ms" are one alert; at most [`FINGERPRINT_MAX`] bytes.
pub(crate) fn fingerprint_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(FINGERPRINT_MAX));
    let mut in_digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
        if out.len() >= FINGERPRINT_MAX {
            break;
        }
    }
    out
}

/// Keeps the `max` most recent distinct example traces of a window.
pub(crate) fn push_example(examples: &mut VecDeque<String>, trace_id: &str, max: usize) {
    if max == 0 || trace_id.is_empty() || examples.iter().any(|t| t == trace_id) {
        return;
    }
    if examples.len() >= max {
        examples.pop_front();
    }
    examples.push_back(trace_id.to_string());
}

/// A number without a trailing `.0`.
pub(crate) fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.1}")
    }
}

/// Nanoseconds as whole seconds, `31 s`.
pub(crate) fn fmt_secs(nanos: u64) -> String {
    let secs = nanos as f64 / NANOS_PER_SEC as f64;
    if secs >= 10.0 || secs.fract() < 0.05 {
        format!("{} s", secs.round() as u64)
    } else {
        format!("{secs:.1} s")
    }
}
