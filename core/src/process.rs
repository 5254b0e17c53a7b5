//! What every dlog binary does before and after its real work: set up logging to stderr, and
//! wait for Ctrl-C or SIGTERM to stop gracefully.

use std::future::Future;

use tracing_subscriber::EnvFilter;

pub use tokio_util::sync::CancellationToken;

/// Installs a stderr `fmt` subscriber filtered by the first of `env_vars` that is set (for
/// example `DLOG_BRIDGE_LOG`, then `RUST_LOG`), else by `default_filter`. Stdout stays free
/// for what a binary prints on purpose (alerts, query results). ANSI colours are used only
/// when stderr is a terminal and `NO_COLOR` is not set.
pub fn init_logging(env_vars: &[&str], default_filter: &str) -> Result<(), LoggingError> {
    let (source, filter) = env_vars
        .iter()
        .find_map(|var| std::env::var(var).ok().map(|value| (*var, value)))
        .unwrap_or(("the default", default_filter.to_string()));
    let env_filter = EnvFilter::try_new(&filter).map_err(|e| LoggingError {
        origin: source.to_string(),
        filter: filter.clone(),
        reason: e.to_string(),
    })?;
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: `2> file` and the demo's log files get
        // plain text, and `NO_COLOR` turns them off everywhere.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init()
        .map_err(|e| LoggingError {
            origin: source.to_string(),
            filter,
            reason: e.to_string(),
        })
}

/// The log filter was invalid, or logging was already set up.
#[derive(Debug, thiserror::Error)]
#[error("invalid log filter `{filter}` from {origin}: {reason}")]
pub struct LoggingError {
    /// Which variable the filter came from.
    pub origin: String,
    /// The filter.
    pub filter: String,
    /// Why it was refused.
    pub reason: String,
}

/// A token cancelled on Ctrl-C or SIGTERM: the one stop signal a binary hands to its stage
/// (every stage is told to stop through a [`CancellationToken`]). Call it inside the runtime.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let signal = shutdown_signal();
    let cancel = token.clone();
    tokio::spawn(async move {
        signal.await;
        cancel.cancel();
    });
    token
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives while a component is still starting is not
/// lost. A handler that cannot be installed is logged and not awaited; the other signal, or
/// SIGKILL, still stops the process.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGTERM"))
            .ok();
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| tracing::warn!(error = %e, "cannot listen for Ctrl-C"))
            .ok();
        async move {
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = term => {}
                () = int => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
