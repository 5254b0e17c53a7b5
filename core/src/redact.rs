//! The secret-name rule: which names (attribute keys, query parameters) hold a secret.
//!
//! A name is a secret when its last dot-separated segment, compared case-insensitively and
//! with `-` read as `_`, is one of [`SENSITIVE_KEYS`] (or of the extra names a
//! [`SecretNames`] is built with), or ends with one after a word boundary: a `_` or `-`, or a
//! lowercase letter or digit followed by the capital that starts the name (camelCase). So
//! `http.request.header.authorization`, `db.password`, `http.request.header.x-api-key`,
//! `user_password`, `X-Auth-Token` and `clientSecret` are secrets, while
//! `gen_ai.usage.input_tokens`, `token_count`, `password.length`, `monkey`, `keyboard` and
//! `tokenizer` are not: a name only counts as a whole word at the end of the segment. Names
//! that merely start with a secret's name (`next_page_token_id`) are kept; names that end
//! with one are redacted even when harmless (`next_page_token`, `csrf_token`): the rule errs
//! on the side of hiding.
//!
//! The collector bridge applies it to every attribute key it forwards; the SDK applies it to
//! the query keys of the `url.full` it records.

/// Names that are secrets by default (lowercase, `_` for `-`), when they are a name's last
/// segment or end it as a whole word.
pub const SENSITIVE_KEYS: &[&str] = &[
    "authorization",
    "proxy_authorization",
    "cookie",
    "set_cookie",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "private_key",
    "secret_key",
    "secret_access_key",
];

/// The longest extra name a [`SecretNames`] takes (longer ones are ignored).
pub const MAX_KEY_SEGMENT: usize = 64;

/// 64-bit words in a normalised key segment of at most [`MAX_KEY_SEGMENT`] bytes.
const WORDS: usize = MAX_KEY_SEGMENT / 8;

/// The last bytes of a normalised key segment, last byte first, as little-endian words,
/// zero-padded: whether a name ends the segment is whether its first `len` bytes (reversed
/// the same way) are equal, `len.div_ceil(8)` integer comparisons with no call into
/// `memcmp`. This runs for every attribute key the bridge forwards.
type Words = [u64; WORDS];

/// The secret-name rule for [`SENSITIVE_KEYS`] plus extra names.
#[derive(Debug, Clone)]
pub struct SecretNames {
    /// The normalised names, reversed, by their length in bytes (index 0 to
    /// `MAX_KEY_SEGMENT`).
    by_len: Vec<Vec<Words>>,
    /// The longest name's length.
    longest: usize,
    /// By normalised last byte, the lengths of the names that end with it (bit `len - 1`):
    /// most keys are ruled out by their last byte before anything is normalised, and the rest
    /// are compared only at the lengths that can match.
    lengths_by_last: [u64; 256],
}

impl Default for SecretNames {
    /// [`SENSITIVE_KEYS`] alone.
    fn default() -> SecretNames {
        SecretNames::new([])
    }
}

impl SecretNames {
    /// The rule for [`SENSITIVE_KEYS`] and `extra` names (normalised here; empty ones and
    /// ones longer than [`MAX_KEY_SEGMENT`] bytes are ignored).
    pub fn new<'a>(extra: impl IntoIterator<Item = &'a str>) -> SecretNames {
        let mut by_len: Vec<Vec<Words>> = vec![Vec::new(); MAX_KEY_SEGMENT + 1];
        let mut lengths_by_last = [0u64; 256];
        let mut longest = 0;
        for segment in SENSITIVE_KEYS.iter().copied().chain(extra) {
            let bytes = segment.as_bytes();
            let Some(&last) = bytes.last().filter(|_| bytes.len() <= MAX_KEY_SEGMENT) else {
                continue;
            };
            lengths_by_last[usize::from(normalise(last))] |= 1 << (bytes.len() - 1);
            longest = longest.max(bytes.len());
            let words = reversed(bytes, MAX_KEY_SEGMENT);
            let same = &mut by_len[bytes.len()];
            if !same.contains(&words) {
                same.push(words);
            }
        }
        SecretNames {
            by_len,
            longest,
            lengths_by_last,
        }
    }

    /// Whether `key` names a secret.
    #[inline]
    pub fn matches(&self, key: &[u8]) -> bool {
        let Some(&last) = key.last() else {
            return false;
        };
        let mut lengths = self.lengths_by_last[usize::from(normalise(last))];
        if lengths == 0 {
            return false;
        }
        let segment = match key.iter().rposition(|b| *b == b'.') {
            Some(dot) => &key[dot + 1..],
            None => key,
        };
        // Only names that fit in the segment.
        if segment.len() < 64 {
            lengths &= (1u64 << segment.len()) - 1;
        }
        let mut words = None;
        while lengths != 0 {
            let len = lengths.trailing_zeros() as usize + 1;
            lengths &= lengths - 1;
            // The name must start a word: the whole segment, after `_` or `-`, or a capital
            // after a lowercase letter or digit.
            let start = segment.len() - len;
            if start > 0 {
                let before = segment[start - 1];
                let camel = segment[start].is_ascii_uppercase()
                    && (before.is_ascii_lowercase() || before.is_ascii_digit());
                if !(before == b'_' || before == b'-' || camel) {
                    continue;
                }
            }
            let words = words.get_or_insert_with(|| reversed(segment, self.longest));
            if self.by_len[len]
                .iter()
                .any(|name| starts_equal(name, words, len))
            {
                return true;
            }
        }
        false
    }
}

/// The last `limit` (at most [`MAX_KEY_SEGMENT`]) bytes of `segment`, lowercased, `-` as `_`,
/// last byte first, as words.
#[inline]
fn reversed(segment: &[u8], limit: usize) -> Words {
    let mut bytes = [0u8; MAX_KEY_SEGMENT];
    for (to, from) in bytes.iter_mut().zip(segment.iter().rev().take(limit)) {
        *to = normalise(*from);
    }
    let mut words = [0u64; WORDS];
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(chunk);
        *word = u64::from_le_bytes(eight);
    }
    words
}

/// Whether the first `len` bytes of two [`reversed`] segments are equal.
#[inline]
fn starts_equal(a: &Words, b: &Words, len: usize) -> bool {
    let full = len / 8;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = len % 8;
    rest == 0 || {
        let mask = (1u64 << (8 * rest)) - 1;
        (a[full] ^ b[full]) & mask == 0
    }
}

#[inline]
fn normalise(b: u8) -> u8 {
    if b == b'-' {
        b'_'
    } else {
        b.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_words_ending_the_last_segment_are_secrets() {
        let names = SecretNames::default();
        for key in [
            "x-api-key",
            "clientSecret",
            "user_password",
            "db.password",
            "next_page_token",
        ] {
            assert!(names.matches(key.as_bytes()), "{key}");
        }
        for key in ["token_count", "tokens", "monkey", "password.length", ""] {
            assert!(!names.matches(key.as_bytes()), "{key}");
        }
        let extra = SecretNames::new(["pwd", ""]);
        assert!(extra.matches(b"db_pwd") && !extra.matches(b"pwd.length"));
        assert!(!SecretNames::default().matches(b"pwd"));
    }
}
