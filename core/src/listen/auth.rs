//! Bearer-token authentication as a tower layer, for axum routers and tonic servers alike.
//!
//! A request passes when its `authorization` header is `Bearer <token>` for one of the
//! configured tokens. Otherwise it is answered without reaching the service: gRPC requests
//! (`content-type: application/grpc...`) with `UNAUTHENTICATED` (status 16), others with HTTP
//! 401 and `WWW-Authenticate: Bearer`; and the refusal is counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use futures::future::{Either, Ready};
use prometheus_client::metrics::counter::Counter;
use subtle::ConstantTimeEq;

/// Largest token file read, in bytes: a token file is a handful of lines.
pub const MAX_TOKEN_FILE_BYTES: u64 = 1024 * 1024;

/// The token set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The token file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file is larger than [`MAX_TOKEN_FILE_BYTES`].
    #[error("the token file {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A token holds a character that cannot travel in an HTTP header.
    #[error("{origin}: a token may hold only visible ASCII characters")]
    Invalid {
        /// Where the token came from.
        origin: String,
    },
    /// Tokens were asked for but none was given.
    #[error("{origin} holds no token")]
    Empty {
        /// Where the tokens were looked for.
        origin: String,
    },
}

/// The accepted bearer tokens (at least one).
#[derive(Clone)]
pub struct Tokens(Arc<Vec<Box<[u8]>>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} tokens)", self.0.len())
    }
}

impl Tokens {
    /// The tokens given inline and those in `file` (one per line; blank lines and lines
    /// starting with `#` are skipped). `Ok(None)` when neither is given: auth is off.
    pub fn load(inline: Option<&str>, file: Option<&Path>) -> Result<Option<Tokens>, TokensError> {
        let mut tokens = Vec::new();
        if let Some(token) = inline {
            tokens.push(check_token(token.trim(), "the inline token")?);
            if tokens.last().is_some_and(|t| t.is_empty()) {
                return Err(TokensError::Empty {
                    origin: "the inline token".to_string(),
                });
            }
        }
        if let Some(path) = file {
            let read = |source| TokensError::Read {
                path: path.to_path_buf(),
                source,
            };
            let size = std::fs::metadata(path).map_err(read)?.len();
            if size > MAX_TOKEN_FILE_BYTES {
                return Err(TokensError::TooLarge {
                    path: path.to_path_buf(),
                });
            }
            let text = std::fs::read_to_string(path).map_err(read)?;
            let before = tokens.len();
            for line in text.lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                tokens.push(check_token(
                    line,
                    &format!("the token file {}", path.display()),
                )?);
            }
            if tokens.len() == before {
                return Err(TokensError::Empty {
                    origin: format!("the token file {}", path.display()),
                });
            }
        }
        Ok((!tokens.is_empty()).then(|| Tokens(Arc::new(tokens))))
    }

    /// Whether `presented` is one of the tokens. Every token is compared, each in constant
    /// time, so the answer's timing tells nothing about which bytes matched.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let mut matched = subtle::Choice::from(0);
        for token in self.0.iter() {
            matched |= token.as_ref().ct_eq(presented);
        }
        matched.into()
    }
}

fn check_token(token: &str, origin: &str) -> Result<Box<[u8]>, TokensError> {
    if token.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(token.as_bytes().into())
    } else {
        Err(TokensError::Invalid {
            origin: origin.to_string(),
        })
    }
}

/// The tower layer that lets through only requests bearing one of `tokens`, counting the
/// others in `refused`. Without tokens (auth off) it lets every request through.
#[derive(Clone, Debug)]
pub struct BearerAuth {
    tokens: Option<Tokens>,
    refused: Counter,
}

impl BearerAuth {
    /// A layer accepting `tokens` (everything when `None`); refusals increment `refused`.
    pub fn new(tokens: Option<Tokens>, refused: Counter) -> Self {
        BearerAuth { tokens, refused }
    }

    /// Whether `request` bears an accepted token (or auth is off).
    fn admits<B>(&self, request: &Request<B>) -> bool {
        let Some(tokens) = &self.tokens else {
            return true;
        };
        let Some(value) = request.headers().get(header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        // RFC 7235: the scheme is case-insensitive; one or more spaces follow it.
        let Some((scheme, token)) = value.split_at_checked(6) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") || !token.starts_with(b" ") {
            return false;
        }
        tokens.accepts(token.trim_ascii())
    }
}

impl<S> tower::Layer<S> for BearerAuth {
    type Service = RequireBearer<S>;

    fn layer(&self, inner: S) -> RequireBearer<S> {
        RequireBearer {
            inner,
            auth: self.clone(),
        }
    }
}

/// The service [`BearerAuth`] wraps around another.
#[derive(Clone, Debug)]
pub struct RequireBearer<S> {
    inner: S,
    auth: BearerAuth,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for RequireBearer<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<ResBody>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if self.auth.admits(&request) {
            return Either::Left(self.inner.call(request));
        }
        self.auth.refused.inc();
        let grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        Either::Right(futures::future::ready(Ok(refusal(grpc))))
    }
}

/// gRPC status code `UNAUTHENTICATED`.
const GRPC_UNAUTHENTICATED: &str = "16";

/// The answer to a request without an accepted token: a trailers-only gRPC response with
/// `UNAUTHENTICATED`, or HTTP 401.
fn refusal<B: Default>(grpc: bool) -> Response<B> {
    let mut response = Response::new(B::default());
    let headers = response.headers_mut();
    if grpc {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(
            "grpc-status",
            HeaderValue::from_static(GRPC_UNAUTHENTICATED),
        );
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("missing%20or%20wrong%20bearer%20token"),
        );
    } else {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(list: &str) -> Tokens {
        let dir = std::env::temp_dir().join(format!("dlog-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.txt", list.len()));
        std::fs::write(&path, list).unwrap();
        Tokens::load(None, Some(&path)).unwrap().unwrap()
    }

    #[test]
    fn the_file_holds_one_token_per_line_skipping_blanks_and_comments() {
        let set = tokens("# rotated 2026-01\nalpha\n\n  beta  \n");
        assert!(set.accepts(b"alpha"));
        assert!(set.accepts(b"beta"));
        assert!(!set.accepts(b"# rotated 2026-01"));
        assert!(!set.accepts(b"alph"));
        assert!(!set.accepts(b""));
    }

    #[test]
    fn no_setting_means_no_auth_and_an_empty_file_is_an_error() {
        assert!(Tokens::load(None, None).unwrap().is_none());
        let dir = std::env::temp_dir().join(format!("dlog-tokens-e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.txt");
        std::fs::write(&path, "# nothing\n\n").unwrap();
        assert!(matches!(
            Tokens::load(None, Some(&path)),
            Err(TokensError::Empty { .. })
        ));
        assert!(matches!(
            Tokens::load(Some("has space"), None),
            Err(TokensError::Invalid { .. })
        ));
    }

    #[test]
    fn only_a_bearer_header_with_a_known_token_is_admitted() {
        let auth = BearerAuth::new(Some(tokens("s3cret\n")), Counter::default());
        let with = |value: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, value)
                .body(())
                .unwrap()
        };
        assert!(auth.admits(&with("Bearer s3cret")));
        assert!(auth.admits(&with("bearer  s3cret")));
        assert!(!auth.admits(&with("Bearer s3cre")));
        assert!(!auth.admits(&with("Basic s3cret")));
        assert!(!auth.admits(&with("Bearers3cret")));
        assert!(!auth.admits(&Request::new(())));
        assert!(BearerAuth::new(None, Counter::default()).admits(&Request::new(())));
    }
}
