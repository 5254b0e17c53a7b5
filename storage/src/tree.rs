//! The trace tree: a trace's spans indented by parent, each with its service, operation,
//! offset from the trace start, duration, error status and a proportional waterfall bar, and
//! the trace's logs under the span they belong to.
//!
//! Spans whose parent never arrived are shown under the root and marked as orphans, never
//! dropped. Rendering sorts each span's children once and walks the tree with an explicit
//! stack, so it is O(n log n) and a 10,000-span trace (or a 10,000-deep chain) prints at once.

use std::collections::HashMap;
use std::fmt::Write as _;

use dlog_core::model::{LogEntry, SpanRecord};
use dlog_core::terminal::escape_control as esc;

/// How the tree is drawn.
#[derive(Debug, Clone)]
pub struct TreeOptions {
    /// Width of the waterfall bar, in characters.
    pub bar_width: usize,
    /// Widest the tree column may get before operation names are cut.
    pub max_label_width: usize,
    /// Print the logs under their spans.
    pub show_logs: bool,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            bar_width: 40,
            max_label_width: 90,
            show_logs: true,
        }
    }
}

/// A human duration: `850ns`, `12µs`, `3.250ms`, `1.204s`.
pub fn format_duration(nanos: u64) -> String {
    if nanos < 1_000 {
        format!("{nanos}ns")
    } else if nanos < 1_000_000 {
        format!("{:.0}µs", nanos as f64 / 1e3)
    } else if nanos < 1_000_000_000 {
        format!("{:.3}ms", nanos as f64 / 1e6)
    } else {
        format!("{:.3}s", nanos as f64 / 1e9)
    }
}

/// RFC 3339 UTC time of ns since the Unix epoch, to the millisecond.
pub fn format_time(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let ms = (ns / 1_000_000) % 1000;
    let date = crate::elastic::model::date_of_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{date}T{:02}:{:02}:{:02}.{ms:03}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

/// Deepest level drawn with its own indentation.
const MAX_INDENT: usize = 24;

enum Line<'a> {
    Span {
        idx: usize,
        prefix: String,
        orphan: bool,
        depth: usize,
    },
    Log {
        log: &'a LogEntry,
        prefix: String,
    },
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

fn truncate(s: &str, max: usize) -> String {
    if char_len(s) <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Renders a trace. `spans` may come in any order; `logs` are the trace's logs.
pub fn render_trace<'a>(
    spans: &'a [SpanRecord],
    logs: &'a [LogEntry],
    options: &TreeOptions,
) -> String {
    let mut out = String::new();
    if spans.is_empty() {
        out.push_str("trace not found (no spans stored)\n");
        return out;
    }
    let n = spans.len();
    let by_id: HashMap<&str, usize> = spans
        .iter()
        .enumerate()
        .rev()
        .map(|(i, s)| (s.span_id.as_str(), i))
        .collect();
    let by_start = |a: &usize, b: &usize| {
        spans[*a]
            .start_unix_nano
            .cmp(&spans[*b].start_unix_nano)
            .then_with(|| spans[*a].span_id.cmp(&spans[*b].span_id))
    };
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut roots = Vec::new();
    let mut orphans = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        match span.parent_span_id.as_deref() {
            None => roots.push(i),
            Some(p) => match by_id.get(p) {
                Some(&parent) if parent != i => children[parent].push(i),
                _ => orphans.push(i),
            },
        }
    }
    for c in &mut children {
        c.sort_by(by_start);
    }
    roots.sort_by(by_start);
    let mut logs_of: HashMap<&str, Vec<&'a LogEntry>> = HashMap::new();
    let mut loose_logs = Vec::new();
    for log in logs {
        match log.span_id.as_deref().filter(|s| by_id.contains_key(s)) {
            Some(s) => logs_of.entry(s).or_default().push(log),
            None => loose_logs.push(log),
        }
    }
    for l in logs_of.values_mut() {
        l.sort_by_key(|l| l.time_unix_nano);
    }
    loose_logs.sort_by_key(|l| l.time_unix_nano);

    // Walk depth-first with an explicit stack: (span, prefix for its children, is last,
    // orphan). Spans never reached (parent cycles) are added as orphans afterwards.
    let mut visited = vec![false; n];
    let mut lines: Vec<Line> = Vec::with_capacity(n + logs.len());
    let walk = |start: usize,
                head: String,
                orphan: bool,
                visited: &mut Vec<bool>,
                lines: &mut Vec<Line<'a>>,
                extra: &[usize]| {
        // Stack entries: (span, prefix drawn before it, prefix for its children, orphan,
        // depth). Past MAX_INDENT levels the prefix stops growing (and the label names the
        // depth), so a very deep chain stays O(n) in output size.
        let mut stack: Vec<(usize, String, String, bool, usize)> =
            vec![(start, head.clone(), head, orphan, 0)];
        let mut first = true;
        while let Some((idx, prefix, child_prefix, orphan, depth)) = stack.pop() {
            if visited[idx] {
                continue;
            }
            visited[idx] = true;
            lines.push(Line::Span {
                idx,
                prefix,
                orphan,
                depth,
            });
            let mut kids: Vec<(usize, bool)> = children[idx].iter().map(|k| (*k, false)).collect();
            if first {
                kids.extend(extra.iter().map(|o| (*o, true)));
                first = false;
            }
            let span_logs = if options.show_logs {
                logs_of
                    .get(spans[idx].span_id.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
            } else {
                &[]
            };
            let log_prefix = if kids.is_empty() {
                child_prefix.clone()
            } else {
                format!("{child_prefix}│  ")
            };
            for log in span_logs {
                lines.push(Line::Log {
                    log,
                    prefix: log_prefix.clone(),
                });
            }
            let last = kids.len().saturating_sub(1);
            for (pos, (kid, kid_orphan)) in kids.into_iter().enumerate().rev() {
                let (branch, cont) = if pos == last {
                    ("└─ ", "   ")
                } else {
                    ("├─ ", "│  ")
                };
                let (p, c) = if depth < MAX_INDENT {
                    (
                        format!("{child_prefix}{branch}"),
                        format!("{child_prefix}{cont}"),
                    )
                } else {
                    (child_prefix.clone(), child_prefix.clone())
                };
                stack.push((kid, p, c, kid_orphan, depth + 1));
            }
        }
    };
    orphans.sort_by(by_start);
    if roots.is_empty() {
        // No root arrived: every orphan stands at the top.
        for &o in &orphans {
            walk(o, String::new(), true, &mut visited, &mut lines, &[]);
        }
    } else {
        walk(
            roots[0],
            String::new(),
            false,
            &mut visited,
            &mut lines,
            &orphans,
        );
        for &r in &roots[1..] {
            walk(r, String::new(), false, &mut visited, &mut lines, &[]);
        }
    }
    let mut unreachable: Vec<usize> = (0..n).filter(|i| !visited[*i]).collect();
    unreachable.sort_by(by_start);
    for u in unreachable {
        walk(u, String::new(), true, &mut visited, &mut lines, &[]);
    }

    // Header.
    let t0 = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
    let t1 = spans
        .iter()
        .map(|s| s.end_unix_nano)
        .max()
        .unwrap_or(t0)
        .max(t0);
    let total = (t1 - t0).max(1);
    let mut services: Vec<&str> = spans.iter().map(|s| s.service.name.as_str()).collect();
    services.sort_unstable();
    services.dedup();
    let errors = spans.iter().filter(|s| s.is_error()).count();
    let orphan_count = lines
        .iter()
        .filter(|l| matches!(l, Line::Span { orphan: true, .. }))
        .count();
    let _ = writeln!(
        out,
        "Trace {}  {} span{}, {} service{} ({}), {} error{}{}  duration {}  started {}",
        esc(&spans[0].trace_id),
        n,
        if n == 1 { "" } else { "s" },
        services.len(),
        if services.len() == 1 { "" } else { "s" },
        esc(&services.join(", ")),
        errors,
        if errors == 1 { "" } else { "s" },
        if orphan_count > 0 {
            format!(", {orphan_count} orphan(s)")
        } else {
            String::new()
        },
        format_duration(t1 - t0),
        format_time(t0),
    );

    // Labels, then one column width for all so the timings and bars line up.
    let labels: Vec<String> = lines
        .iter()
        .map(|line| match line {
            Line::Span {
                idx,
                prefix,
                orphan,
                depth,
            } => {
                let s = &spans[*idx];
                let deep = if *depth > MAX_INDENT {
                    format!("[depth {depth}] ")
                } else {
                    String::new()
                };
                let mut label = format!("{prefix}{deep}{}: {}", esc(&s.service.name), esc(&s.name));
                if *orphan {
                    let _ = write!(
                        label,
                        " [orphan: parent {} missing]",
                        esc(s.parent_span_id.as_deref().unwrap_or("?"))
                    );
                }
                truncate(&label, options.max_label_width)
            }
            Line::Log { log, prefix } => truncate(
                &format!("{prefix}· {} {}", esc(&log.level), esc(&log.body)),
                options.max_label_width,
            ),
        })
        .collect();
    let width = labels
        .iter()
        .zip(&lines)
        .filter(|(_, l)| matches!(l, Line::Span { .. }))
        .map(|(l, _)| char_len(l))
        .max()
        .unwrap_or(0);
    let bar_width = options.bar_width.max(1);
    for (label, line) in labels.iter().zip(&lines) {
        match line {
            Line::Span { idx, .. } => {
                let s = &spans[*idx];
                let offset = s.start_unix_nano.saturating_sub(t0);
                let dur = s.duration_nanos();
                let from = ((offset as u128 * bar_width as u128) / total as u128) as usize;
                let from = from.min(bar_width - 1);
                let len = ((dur as u128 * bar_width as u128).div_ceil(total as u128) as usize)
                    .clamp(1, bar_width - from);
                let bar: String =
                    " ".repeat(from) + &"█".repeat(len) + &" ".repeat(bar_width - from - len);
                let status = if s.is_error() {
                    if s.status_message.is_empty() {
                        "  ERROR".to_string()
                    } else {
                        format!("  ERROR: {}", esc(&s.status_message))
                    }
                } else {
                    String::new()
                };
                let pad = width.saturating_sub(char_len(label));
                let _ = writeln!(
                    out,
                    "{label}{}  {:>11}  {:>10}  |{bar}|{status}",
                    " ".repeat(pad),
                    format!("+{}", format_duration(offset)),
                    format_duration(dur),
                );
            }
            Line::Log { log, .. } => {
                let offset = log.time_unix_nano.saturating_sub(t0);
                let pad = width.saturating_sub(char_len(label));
                let _ = writeln!(
                    out,
                    "{label}{}  {:>11}",
                    " ".repeat(pad),
                    format!("+{}", format_duration(offset))
                );
            }
        }
    }
    if options.show_logs && !loose_logs.is_empty() {
        let _ = writeln!(out, "logs of this trace without a known span:");
        for log in loose_logs {
            let _ = writeln!(
                out,
                "   · {} {} {} {}",
                format_time(log.time_unix_nano),
                esc(&log.service.name),
                esc(&log.level),
                esc(&log.body)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dlog_core::model::{ServiceInfo, SpanKind, StatusCode};
    use std::time::Instant;

    fn span(
        id: &str,
        parent: Option<&str>,
        service: &str,
        name: &str,
        start_ms: u64,
        dur_ms: u64,
    ) -> SpanRecord {
        SpanRecord {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            name: name.into(),
            kind: SpanKind::Internal,
            start_unix_nano: 1_000_000_000_000 + start_ms * 1_000_000,
            end_unix_nano: 1_000_000_000_000 + (start_ms + dur_ms) * 1_000_000,
            status: StatusCode::Unset,
            status_message: String::new(),
            service: ServiceInfo {
                name: service.into(),
                ..Default::default()
            },
            scope: String::new(),
            attributes: Default::default(),
            events: vec![],
            links: vec![],
        }
    }

    #[test]
    fn tree_is_indented_with_offsets_bars_errors_logs_and_orphans() {
        let mut db = span("4", Some("3"), "backend", "db query", 20, 60);
        db.status = StatusCode::Error;
        db.status_message = "deadlock".into();
        let spans = vec![
            db,
            span("1", None, "frontend", "GET /checkout", 0, 100),
            span("3", Some("2"), "backend", "POST /charge", 10, 80),
            span("2", Some("1"), "frontend", "charge", 5, 90),
            span("9", Some("missing"), "frontend", "late", 50, 10),
        ];
        let logs = vec![LogEntry {
            time_unix_nano: 1_000_000_000_000 + 30_000_000,
            severity_number: 17,
            level: "ERROR".into(),
            body: "charge failed".into(),
            trace_id: Some(spans[0].trace_id.clone()),
            span_id: Some("4".into()),
            event_name: None,
            service: ServiceInfo::default(),
            attributes: Default::default(),
        }];
        let out = render_trace(
            &spans,
            &logs,
            &TreeOptions {
                bar_width: 10,
                ..Default::default()
            },
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].contains("5 spans, 2 services (backend, frontend), 1 error, 1 orphan(s)"),
            "{out}"
        );
        assert!(lines[1].starts_with("frontend: GET /checkout "), "{out}");
        assert!(
            lines[1].contains("+0ns")
                && lines[1].contains("100.000ms")
                && lines[1].contains("|██████████|"),
            "{out}"
        );
        assert!(lines[2].starts_with("├─ frontend: charge "), "{out}");
        assert!(
            lines[3].starts_with("│  └─ backend: POST /charge "),
            "{out}"
        );
        assert!(lines[4].starts_with("│     └─ backend: db query "), "{out}");
        assert!(
            lines[4].contains("+20.000ms") && lines[4].contains("|  ██████  |  ERROR: deadlock"),
            "{out}"
        );
        assert!(
            lines[5].starts_with("│        · ERROR charge failed")
                && lines[5].contains("+30.000ms"),
            "{out}"
        );
        assert!(
            lines[6].starts_with("└─ frontend: late [orphan: parent missing missing]"),
            "{out}"
        );
        assert_eq!(lines.len(), 7, "{out}");
    }

    #[test]
    fn ten_thousand_spans_render_fast_even_as_one_deep_chain() {
        let mut spans = Vec::new();
        for i in 0..10_000u64 {
            let parent = (i > 0).then(|| format!("{:016x}", i - 1));
            spans.push(span(
                &format!("{i:016x}"),
                parent.as_deref(),
                "svc",
                "op",
                i,
                10_000 - i,
            ));
        }
        spans.reverse();
        let started = Instant::now();
        let out = render_trace(&spans, &[], &TreeOptions::default());
        let elapsed = started.elapsed();
        assert_eq!(out.lines().count(), 10_001);
        // Printed for information only: the benchmark measures it.
        eprintln!("10,000-deep chain rendered in {elapsed:?}");
    }

    #[test]
    fn a_trace_without_root_shows_every_span_as_orphan() {
        let spans = vec![
            span("2", Some("1"), "a", "x", 0, 1),
            span("3", Some("2"), "a", "y", 0, 1),
        ];
        let out = render_trace(&spans, &[], &TreeOptions::default());
        assert!(
            out.lines()
                .nth(1)
                .unwrap()
                .starts_with("a: x [orphan: parent 1 missing]"),
            "{out}"
        );
        assert!(out.lines().nth(2).unwrap().starts_with("└─ a: y "), "{out}");
    }

    #[test]
    fn regression_terminal_escapes_sender_text_prints_visibly_escaped() {
        let mut evil = span("1", None, "svc\x1b]0;pwned\x07", "op\x1b[2J", 0, 10);
        evil.status = StatusCode::Error;
        evil.status_message = "boom\r\x1b[31mfake".into();
        let out = render_trace(&[evil], &[], &TreeOptions::default());
        assert!(!out.contains('\x1b') && !out.contains('\r'), "{out:?}");
        assert!(out.contains("svc\\x1b]0;pwned\\x07: op\\x1b[2J"), "{out}");
        assert!(out.contains("ERROR: boom\\r\\x1b[31mfake"), "{out}");
    }
}
