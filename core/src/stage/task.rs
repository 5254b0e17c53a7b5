//! The running half of every stage's handle: its task and the token that stops it.

use std::future::Future;

use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

/// A stage's spawned loop and the [`CancellationToken`] that stops it. Dropping it without
/// [`StageTask::shutdown`] aborts the loop where it is, as a crash would, and cancels the
/// token: a stage never keeps running detached from its handle.
#[derive(Debug)]
pub struct StageTask<E> {
    shutdown: CancellationToken,
    /// None once [`StageTask::stopped`] saw it end.
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E: From<JoinError> + Send + 'static> StageTask<E> {
    /// Spawns `run`, which must stop once `shutdown` is cancelled.
    pub fn spawn(
        shutdown: CancellationToken,
        run: impl Future<Output = Result<(), E>> + Send + 'static,
    ) -> Self {
        StageTask {
            shutdown,
            task: Some(tokio::spawn(run)),
        }
    }

    /// The token that stops the stage.
    pub fn token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Resolves when the stage has stopped: on its own (its input closed, or it failed) or
    /// after a shutdown; while it runs, never. Cancel-safe, for `select!`.
    pub async fn stopped(&mut self) -> Result<(), E> {
        let Some(task) = self.task.as_mut() else {
            return Ok(());
        };
        let result = task.await.unwrap_or_else(|e| Err(E::from(e)));
        self.task = None;
        result
    }

    /// Tells the stage to stop and waits until it has.
    pub async fn shutdown(mut self) -> Result<(), E> {
        self.shutdown.cancel();
        self.stopped().await
    }
}

impl<E> Drop for StageTask<E> {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        // What else runs on the token (admin listeners, retention) stops with it.
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Failed {
        Task,
    }

    impl From<JoinError> for Failed {
        fn from(_: JoinError) -> Self {
            Failed::Task
        }
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_stage() {
        let token = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let task = StageTask::<Failed>::spawn(token, async move {
            let _alive = tx;
            std::future::pending::<()>().await;
            Ok(())
        });
        drop(task);
        // The loop's sender is dropped with it: the channel closes.
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn shutdown_cancels_the_token_and_returns_the_outcome() {
        let token = CancellationToken::new();
        let stop = token.clone();
        let task = StageTask::<Failed>::spawn(token, async move {
            stop.cancelled().await;
            Ok(())
        });
        assert_eq!(task.shutdown().await, Ok(()));
    }
}
