//! Text from senders on a terminal.
//!
//! Log bodies, attribute values, span names and error messages come from the worst client in
//! the fleet. Printed raw, `ESC [ 2 J` clears the operator's screen, an OSC sequence retitles
//! the window or plants a hyperlink, and a carriage return overwrites the line it is on. Every
//! printer of record text goes through [`escape_control`].

use std::borrow::Cow;
use std::fmt::Write;

/// True for what a terminal interprets: C0 controls except tab, DEL, and C1 controls.
fn is_control(c: char) -> bool {
    (c < ' ' && c != '\t') || c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c)
}

/// `text` with every control character but tab written visibly (`\n`, `\r`, `\x1b`,
/// `\x7f`, `\u{9b}`), so that it prints as text and does nothing. Borrowed when there is
/// nothing to escape, which is nearly always.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !is_control(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c < ' ' || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// Writes a command's results to standard output, buffered, through `write`. A reader that
/// went away (`dlog logs | head`, a pager quit early) ends the output quietly: a broken pipe
/// is not an error, and nothing panics as `println!` would. Any other write error is returned.
pub fn write_stdout(
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match write(&mut out).and_then(|()| std::io::Write::flush(&mut out)) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            // What is still buffered has nowhere to go; dropping the writer must not try
            // again and fail the same way.
            let (_, _) = out.into_parts();
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_untouched() {
        let text = "GET /orders/{id} ünïcode\ttabbed 🚀";
        assert!(matches!(escape_control(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn escape_sequences_print_visibly_and_do_nothing() {
        assert_eq!(escape_control("a\x1b[2Jb"), "a\\x1b[2Jb");
        // OSC 8 hyperlink and OSC 0 title, terminated by BEL and by ST.
        assert_eq!(
            escape_control("\x1b]8;;http://evil\x07click\x1b]8;;\x1b\\"),
            "\\x1b]8;;http://evil\\x07click\\x1b]8;;\\x1b\\"
        );
        assert_eq!(escape_control("line\r\nfake"), "line\\r\\nfake");
        assert_eq!(
            escape_control("\u{7f}\u{9b}31m\u{85}"),
            "\\x7f\\u{9b}31m\\u{85}"
        );
        assert_eq!(escape_control("\0"), "\\x00");
    }

    #[test]
    fn nothing_escaped_contains_a_control_character() {
        let all: String = (0u32..0x200).filter_map(char::from_u32).collect();
        let escaped = escape_control(&all);
        assert!(!escaped.chars().any(is_control), "{escaped:?}");
        assert!(escaped.contains('\t'));
    }
}
