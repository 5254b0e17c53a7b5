//! Alerts as readable lines on the terminal, coloured by severity.
//!
//! ```text
//! 2025-01-31T09:12:44.120Z FIRING   CRITICAL heartbeat_down   svc-b/b-1  svc-b (b-1) is down: no heartbeat for 31 s (interval 10 s)
//! 2025-01-31T09:12:51.004Z FIRING   CRITICAL incident         svc-b      svc-b is down: probable root cause of 4 failures in svc-a  [root cause svc-b] [traces 4bf9…]
//! 2025-01-31T09:14:02.530Z RESOLVED CRITICAL heartbeat_down   svc-b/b-1  svc-b (b-1) is back: heartbeat after 78 s of silence
//! ```

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use async_trait::async_trait;
use dlog_core::terminal::escape_control;
use nu_ansi_term::{Color, Style};

pub mod config;

use std::sync::Arc;

use super::{rfc3339, AlertSink, Output, SinkError};
use crate::alert::{Severity, Transition, TransitionKind};
use config::{ColorMode, TerminalConfig};

/// The terminal output `config` describes, if enabled: always best effort.
pub fn build(config: &TerminalConfig) -> Option<Output> {
    config.enabled.then(|| Output {
        sink: Arc::new(TerminalSink::stdout(config.color)),
        filter: config.filter(),
        required: false,
        queue: config.queue,
    })
}

/// Writes one line per transition.
pub struct TerminalSink {
    out: Mutex<Box<dyn Write + Send>>,
    color: bool,
}

impl TerminalSink {
    /// Prints to stdout; `color` decides whether lines are coloured.
    pub fn stdout(color: ColorMode) -> Self {
        let color = match color {
            ColorMode::Always => true,
            ColorMode::Never => false,
            ColorMode::Auto => {
                std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        };
        Self::new(Box::new(std::io::stdout()), color)
    }

    /// Prints to any writer.
    pub fn new(out: Box<dyn Write + Send>, color: bool) -> Self {
        TerminalSink {
            out: Mutex::new(out),
            color,
        }
    }
}

/// One transition as a line (without the newline). Whatever came from senders (service,
/// instance, summary, root cause, trace ids) has its control characters escaped, so an
/// alert cannot clear or retitle the operator's terminal.
pub fn format_line(t: &Transition, color: bool) -> String {
    let a = &t.alert;
    let state = match t.kind {
        TransitionKind::Fired => "FIRING",
        TransitionKind::Updated => "UPDATE",
        TransitionKind::Resolved => "RESOLVED",
    };
    let severity = a.severity.as_str().to_ascii_uppercase();
    let who = match &a.instance {
        Some(i) if *i != a.service => format!("{}/{i}", a.service),
        _ => a.service.clone(),
    };
    let time = rfc3339(match t.kind {
        TransitionKind::Fired => a.first_seen_unix_nano,
        _ => a.last_seen_unix_nano,
    });
    let mut extra = String::new();
    if a.occurrences > 1 {
        extra.push_str(&format!("  [x{}]", a.occurrences));
    }
    if let Some(root) = &a.root_cause {
        if a.rule != crate::alert::rule::INCIDENT {
            extra.push_str(&format!("  [root cause {root}]"));
        }
    }
    if !a.example_trace_ids.is_empty() {
        extra.push_str(&format!("  [traces {}]", a.example_trace_ids.join(",")));
    }
    let who = escape_control(&who);
    let summary = escape_control(&a.summary);
    let extra = escape_control(&extra);
    let rule = escape_control(&a.rule);
    if !color {
        return format!("{time} {state:<8} {severity:<8} {rule:<17} {who}  {summary}{extra}");
    }
    let tone = match (t.kind, a.severity) {
        (TransitionKind::Resolved, _) => Color::Green.normal(),
        (_, Severity::Critical) => Color::Red.bold(),
        (_, Severity::Warning) => Color::Yellow.bold(),
        (_, Severity::Info) => Color::Blue.normal(),
    };
    let dim = Style::new().dimmed();
    format!(
        "{} {} {} {} {}  {}{}",
        dim.paint(time),
        tone.paint(format!("{state:<8}")),
        tone.paint(format!("{severity:<8}")),
        Style::new().bold().paint(format!("{rule:<17}")),
        who,
        tone.paint(summary),
        dim.paint(extra)
    )
}

#[async_trait]
impl AlertSink for TerminalSink {
    fn name(&self) -> &'static str {
        "terminal"
    }

    async fn send(&self, transitions: &[Transition]) -> Result<(), SinkError> {
        let mut text = String::new();
        for t in transitions {
            text.push_str(&format_line(t, self.color));
            text.push('\n');
        }
        let mut out = self
            .out
            .lock()
            .map_err(|_| SinkError::new("terminal", "writer poisoned by a panic"))?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| SinkError::new("terminal", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::alert::{Alert, AlertState};

    fn transition(kind: TransitionKind) -> Transition {
        Transition {
            kind,
            alert: Alert {
                id: "x".into(),
                rule: "heartbeat_down".into(),
                key: "b-1".into(),
                severity: Severity::Critical,
                state: AlertState::Firing,
                service: "svc-b".into(),
                instance: Some("b-1".into()),
                summary: "svc-b (b-1) is down".into(),
                first_seen_unix_nano: 1_700_000_000_000_000_000,
                last_seen_unix_nano: 1_700_000_031_000_000_000,
                occurrences: 1,
                example_trace_ids: vec![],
                root_cause: None,
                incident_id: None,
                labels: BTreeMap::new(),
                revision: 1,
            },
        }
    }

    #[test]
    fn plain_lines_are_readable() {
        assert_eq!(
            format_line(&transition(TransitionKind::Fired), false),
            "2023-11-14T22:13:20.000Z FIRING   CRITICAL heartbeat_down    svc-b/b-1  svc-b (b-1) is down"
        );
        assert!(format_line(&transition(TransitionKind::Resolved), false)
            .starts_with("2023-11-14T22:13:51.000Z RESOLVED"));
    }

    #[test]
    fn coloured_lines_colour_by_severity_and_resolution() {
        let fired = format_line(&transition(TransitionKind::Fired), true);
        assert!(fired.contains("\u{1b}[1;31m"), "{fired:?}"); // bold red
        let resolved = format_line(&transition(TransitionKind::Resolved), true);
        assert!(resolved.contains("\u{1b}[32m"), "{resolved:?}"); // green
    }

    /// Regression: a summary holding `ESC[2J` (clear screen) or an OSC sequence (set the
    /// window title) reached the terminal raw and was obeyed.
    #[test]
    fn regression_terminal_escapes_control_characters_in_alerts() {
        let mut t = transition(TransitionKind::Fired);
        t.alert.summary = "svc-b ERROR: \u{1b}[2J\u{1b}]0;pwned\u{7} gone\r\nFAKE LINE".into();
        t.alert.instance = Some("b-\u{9b}1".into());
        t.alert.example_trace_ids = vec!["\u{1b}[31m".into()];
        for color in [false, true] {
            let line = format_line(&t, color);
            // Only the printer's own colour codes remain, no byte of the sender's controls.
            let without_colour = line.replace("\u{1b}[", "");
            assert!(
                !line.contains("\u{1b}[2J")
                    && !line.contains("\u{1b}]")
                    && !line.contains('\u{9b}'),
                "{line:?}"
            );
            assert!(!without_colour.contains(['\u{7}', '\r', '\n']), "{line:?}");
            assert!(
                line.contains("\\x1b[2J\\x1b]0;pwned\\x07 gone\\r\\nFAKE LINE"),
                "{line:?}"
            );
            assert!(line.contains("svc-b/b-\\u{9b}1"), "{line:?}");
            assert!(line.contains("[traces \\x1b[31m]"), "{line:?}");
        }
    }

    #[tokio::test]
    async fn writes_one_line_per_transition() {
        #[derive(Clone, Default)]
        struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Shared::default();
        let sink = TerminalSink::new(Box::new(buf.clone()), false);
        sink.send(&[
            transition(TransitionKind::Fired),
            transition(TransitionKind::Resolved),
        ])
        .await
        .unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 2);
    }
}
