//! Configuration primitives every stage shares: reading a TOML file into a settings struct,
//! and the error that names the file, the key and the reason.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for the settings struct (unknown key, wrong type).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error, naming the key and line.
        message: String,
    },
    /// A setting has a value the component cannot run with.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid {
        /// The key, as spelt in the file.
        key: String,
        /// Why.
        reason: String,
    },
}

impl ConfigError {
    /// An invalid setting.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Reads a TOML file into `T` (keys the file leaves out take `T`'s serde defaults).
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(&text, path)
}

/// Parses TOML text into `T`; `origin` names where the text came from in errors.
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        #[allow(dead_code)]
        port: u16,
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let err = parse_toml::<Settings>("prot = 1", Path::new("bridge.toml")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("bridge.toml") && text.contains("prot"),
            "{text}"
        );
        let err = read_toml::<Settings>(Path::new("/nonexistent/dlog.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/dlog.toml"), "{err}");
        assert_eq!(
            ConfigError::invalid("port", "must not be 0").to_string(),
            "invalid setting `port`: must not be 0"
        );
    }
}
