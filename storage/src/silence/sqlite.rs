//! Silences and acks of the embedded store: `silences.db`, a small SQLite file next to the
//! store's partitions, opened on first use and shared by every store handle on that directory
//! in this process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::{params, Connection};

use super::{sort_acks, sort_silences, AlertAck, Silence, EXPIRED_KEPT_NANOS, MAX_SILENCES};
use crate::store::StoreError;

/// The file's name in the store directory.
pub const FILE_NAME: &str = "silences.db";

type Shared = Arc<Mutex<Connection>>;

fn open(dir: &Path) -> Result<Shared, StoreError> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Shared>>> = OnceLock::new();
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(c) = open.get(dir) {
        return Ok(c.clone());
    }
    let err = |e: rusqlite::Error| embedded(dir, format!("{FILE_NAME}: {e}"));
    let conn = Connection::open(dir.join(FILE_NAME)).map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS silences (
             id TEXT PRIMARY KEY, ends INTEGER NOT NULL, doc TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS acks (
             alert_id TEXT PRIMARY KEY, at INTEGER NOT NULL, doc TEXT NOT NULL);",
    )
    .map_err(err)?;
    let shared = Arc::new(Mutex::new(conn));
    open.insert(dir.to_path_buf(), shared.clone());
    Ok(shared)
}

fn embedded(dir: &Path, message: String) -> StoreError {
    StoreError::Embedded {
        path: dir.display().to_string(),
        message,
    }
}

/// Runs `f` on the directory's connection off the async runtime.
async fn with<T: Send + 'static>(
    dir: &Path,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let conn = open(&dir)?;
        let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|e| embedded(&dir, format!("{FILE_NAME}: {e}")))
    })
    .await
    .map_err(|e| StoreError::Unavailable(format!("silences task failed: {e}")))?
}

fn corrupt(id: &str, e: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        id: id.to_string(),
        message: e.to_string(),
    }
}

/// Inserts or replaces a silence by id, and prunes silences that ended long ago.
pub async fn put_silence(dir: &Path, silence: &Silence) -> Result<(), StoreError> {
    let doc = serde_json::to_string(silence).map_err(|e| corrupt(&silence.id, e))?;
    let (id, ends) = (silence.id.clone(), silence.ends_unix_nano as i64);
    // Relative to the silence written too, so that one set in another clock's past (a test's
    // manual clock, a host with a wrong clock) is not pruned as it is written.
    let cutoff = crate::store::now_unix_nano()
        .min(silence.starts_unix_nano)
        .saturating_sub(EXPIRED_KEPT_NANOS) as i64;
    with(dir, move |c| {
        c.execute(
            "INSERT OR REPLACE INTO silences (id, ends, doc) VALUES (?1, ?2, ?3)",
            params![id, ends, doc],
        )?;
        c.execute("DELETE FROM silences WHERE ends < ?1", params![cutoff])?;
        Ok(())
    })
    .await
}

/// Deletes a silence; true when it existed.
pub async fn delete_silence(dir: &Path, id: &str) -> Result<bool, StoreError> {
    let id = id.to_string();
    with(dir, move |c| {
        Ok(c.execute("DELETE FROM silences WHERE id = ?1", params![id])? > 0)
    })
    .await
}

/// Every silence kept, latest end first.
pub async fn list_silences(dir: &Path) -> Result<Vec<Silence>, StoreError> {
    let mut out: Vec<Silence> = list_docs(
        dir,
        "SELECT id, doc FROM silences ORDER BY ends DESC, id LIMIT ?1",
    )
    .await?;
    sort_silences(&mut out);
    Ok(out)
}

/// The JSON documents a `SELECT key, doc ... LIMIT ?1` query returns, at most
/// `MAX_SILENCES` of them.
async fn list_docs<T: serde::de::DeserializeOwned>(
    dir: &Path,
    sql: &'static str,
) -> Result<Vec<T>, StoreError> {
    let rows = with(dir, move |c| {
        let mut stmt = c.prepare(sql)?;
        let rows = stmt
            .query_map(params![MAX_SILENCES as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    })
    .await?;
    rows.into_iter()
        .map(|(id, doc)| serde_json::from_str(&doc).map_err(|e| corrupt(&id, e)))
        .collect()
}

/// Inserts or replaces the ack of an alert, and prunes acks older than expired silences.
pub async fn put_ack(dir: &Path, ack: &AlertAck) -> Result<(), StoreError> {
    let doc = serde_json::to_string(ack).map_err(|e| corrupt(&ack.alert_id, e))?;
    let (id, at) = (ack.alert_id.clone(), ack.acked_unix_nano as i64);
    let cutoff = crate::store::now_unix_nano()
        .min(ack.acked_unix_nano)
        .saturating_sub(EXPIRED_KEPT_NANOS) as i64;
    with(dir, move |c| {
        c.execute(
            "INSERT OR REPLACE INTO acks (alert_id, at, doc) VALUES (?1, ?2, ?3)",
            params![id, at, doc],
        )?;
        c.execute("DELETE FROM acks WHERE at < ?1", params![cutoff])?;
        Ok(())
    })
    .await
}

/// Every ack kept, newest first.
pub async fn list_acks(dir: &Path) -> Result<Vec<AlertAck>, StoreError> {
    let mut out: Vec<AlertAck> = list_docs(
        dir,
        "SELECT alert_id, doc FROM acks ORDER BY at DESC LIMIT ?1",
    )
    .await?;
    sort_acks(&mut out);
    Ok(out)
}
