//! What the stages' command lines share: `KEY=VALUE` flags, and laying the flags and
//! environment variables that were given over the settings read from the TOML file.

/// Parses a `KEY=VALUE` flag (a librdkafka property, an attribute filter): key and value are
/// trimmed, and the key must not be empty.
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

/// Reads a file of librdkafka properties, one `KEY=VALUE` a line (as `-X` takes them; blank
/// lines and lines starting with `#` are skipped), for secrets that must not appear on a
/// command line (`sasl.password`), where `ps` shows them. An error names the file and the
/// line number, never the line, which may hold a secret.
pub fn read_properties_file(path: &std::path::Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_properties(&text).map_err(|line| {
        format!(
            "{} line {line}: not KEY=VALUE (a non-empty key, then `=`)",
            path.display()
        )
    })
}

/// The properties of [`read_properties_file`]'s text; `Err` holds the 1-based number of the
/// first line that is not `KEY=VALUE`.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String)>, usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with('#')
        })
        .map(|(n, line)| parse_property(line).map_err(|_| n + 1))
        .collect()
}

/// A flag's help text ending in `[default: VALUE]`, the value taken from the constant the
/// settings use, so that the help never disagrees with the default. (The flags are options,
/// so that an absent flag keeps the file's value; clap's own `default_value` would override
/// it.)
pub fn with_default(help: &str, default: impl std::fmt::Display) -> String {
    format!("{help} [default: {default}]")
}

/// Lays the flags that were given over a settings struct: for each named field, a
/// `Some(value)` in `$flags` replaces the same field of `$settings`; `None` (neither the flag
/// nor its environment variable was given) keeps what the file or the defaults said. With
/// `Some:` first, the settings field is itself an `Option` and receives `Some(value)`.
///
/// ```
/// # struct Flags { port: Option<u16>, token: Option<String> }
/// # #[derive(Default)] struct Settings { port: u16, token: Option<String> }
/// let flags = Flags { port: Some(9000), token: None };
/// let mut settings = Settings { port: 80, token: Some("file".into()) };
/// dlog_core::overlay!(flags => settings, port);
/// dlog_core::overlay!(flags => settings, Some: token);
/// assert_eq!((settings.port, settings.token.as_deref()), (9000, Some("file")));
/// ```
#[macro_export]
macro_rules! overlay {
    ($flags:expr => $settings:expr, Some: $($field:ident),+ $(,)?) => {$(
        if let Some(value) = $flags.$field {
            $settings.$field = Some(value);
        }
    )+};
    ($flags:expr => $settings:expr, $($field:ident),+ $(,)?) => {$(
        if let Some(value) = $flags.$field {
            $settings.$field = value;
        }
    )+};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_are_trimmed_and_need_a_key() {
        assert_eq!(
            parse_property(" compression.type = lz4 "),
            Ok(("compression.type".into(), "lz4".into()))
        );
        assert_eq!(
            parse_property("sasl.password=a=b"),
            Ok(("sasl.password".into(), "a=b".into()))
        );
        assert_eq!(parse_property("x="), Ok(("x".into(), String::new())));
        for bad in ["=v", " =v", "novalue"] {
            let err = parse_property(bad).unwrap_err();
            assert!(err.contains(bad) && err.contains("KEY=VALUE"), "{err}");
        }
    }

    #[test]
    fn a_properties_file_has_one_property_a_line_and_errors_hide_the_line() {
        let text = "# Kafka\r\nsecurity.protocol = SASL_SSL\r\n\n  \nsasl.password=p=w#1\n";
        assert_eq!(
            parse_properties(text),
            Ok(vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.password".into(), "p=w#1".into()),
            ])
        );
        assert_eq!(parse_properties("a=1\n\nhunter2\n"), Err(3));
        let dir = std::env::temp_dir().join(format!("dlog-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kafka.properties");
        std::fs::write(&path, "sasl.username=u\nhunter2\n").unwrap();
        let err = read_properties_file(&path).unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("kafka.properties"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        assert!(read_properties_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
