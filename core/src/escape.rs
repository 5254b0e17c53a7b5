//! Text for terminals: control characters made visible.
//!
//! A log body, an alert summary or a service name is sender-controlled. Printed as is, a
//! `ESC[2J` clears the operator's screen and an OSC sequence retitles the window or writes
//! to the clipboard. [`escape_control`] turns every C0 control except tab, DEL and every C1
//! control into a visible escape (`\x1b`, `\u{9b}`), so what a sender wrote is shown, not
//! obeyed. Newlines are escaped too: one record stays one line.
//!
//! ```
//! use dlog_core::escape::escape_control;
//! assert_eq!(escape_control("ok\tfine"), "ok\tfine");
//! assert_eq!(escape_control("\u{1b}[2Jgone"), "\\x1b[2Jgone");
//! ```

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` is escaped: C0 controls except tab, DEL, and C1 controls.
fn is_escaped(c: char) -> bool {
    (c.is_ascii_control() && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c)
}

/// `text` with control characters (C0 except tab, DEL, C1) written as `\xNN` (C0, DEL) or
/// `\u{NN}` (C1). Borrows when there is nothing to escape.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    let Some(first) = text.find(is_escaped) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        if !is_escaped(c) {
            out.push(c);
        } else if c.is_ascii() {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(
            escape_control("svc-a ERROR: é ✓\t"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn c0_del_and_c1_are_visible() {
        assert_eq!(
            escape_control("a\u{1b}]0;owned\u{7}b\u{7f}c\u{9b}2Jd\r\n"),
            "a\\x1b]0;owned\\x07b\\x7fc\\u{9b}2Jd\\x0d\\x0a"
        );
    }
}
