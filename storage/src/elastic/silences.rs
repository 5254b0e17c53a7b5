//! Silences and acks in Elasticsearch: one `{prefix}-dlog-silences` index, documents
//! `silence:<id>` and `ack:<alert id>` with a `kind` field, written with `refresh=wait_for`
//! (they are few and read back at once).

use elasticsearch::http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{error_text, push_action, push_source, retryable_status, ElasticStore};
use crate::silence::{sort_acks, sort_silences, AlertAck, Silence, MAX_SILENCES};
use crate::store::StoreError;

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Doc {
    Silence(Silence),
    Ack(AlertAck),
}

impl ElasticStore {
    /// `dlog-silences` under the store's prefix.
    fn silences_index(&self) -> String {
        let alerts = self.names.alerts();
        let head = alerts.strip_suffix("dlog-alerts").unwrap_or("");
        format!("{head}dlog-silences")
    }

    async fn bulk_one(
        &self,
        action: Value,
        source: Option<&Doc>,
        id: &str,
    ) -> Result<(), StoreError> {
        let mut body = Vec::new();
        push_action(&mut body, &action);
        if let Some(doc) = source {
            push_source(&mut body, doc).map_err(|e| StoreError::Corrupt {
                id: id.to_string(),
                message: e,
            })?;
        }
        let (status, bytes) = self
            .call(
                Method::Post,
                "/_bulk",
                &[("refresh", "wait_for")],
                Some(body),
                true,
            )
            .await?;
        let text = || {
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(1000)
                .collect::<String>()
        };
        if !(200..300).contains(&status) {
            let m = format!("{} /_bulk (silences): HTTP {status}: {}", self.url, text());
            return Err(if retryable_status(status) {
                StoreError::Unavailable(m)
            } else {
                StoreError::Refused(m)
            });
        }
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Unavailable(format!("silences: answer is not JSON: {e}")))?;
        let item = answer
            .get("items")
            .and_then(|i| i.get(0))
            .and_then(|i| i.as_object())
            .and_then(|o| o.values().next())
            .cloned()
            .unwrap_or(Value::Null);
        let status = item.get("status").and_then(Value::as_u64).unwrap_or(500) as u16;
        if !(200..300).contains(&status) && status != 404 {
            let m = format!(
                "{id}: HTTP {status} {}",
                error_text(&item.get("error").cloned())
            );
            return Err(if retryable_status(status) {
                StoreError::Unavailable(m)
            } else {
                StoreError::Refused(m)
            });
        }
        Ok(())
    }

    pub(crate) async fn es_put_silence(&self, silence: &Silence) -> Result<(), StoreError> {
        let id = format!("silence:{}", silence.id);
        self.bulk_one(
            json!({"index": {"_index": self.silences_index(), "_id": id}}),
            Some(&Doc::Silence(silence.clone())),
            &id,
        )
        .await
    }

    pub(crate) async fn es_delete_silence(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.es_list_silences().await?.iter().any(|s| s.id == id);
        let id = format!("silence:{id}");
        self.bulk_one(
            json!({"delete": {"_index": self.silences_index(), "_id": id}}),
            None,
            &id,
        )
        .await?;
        Ok(existed)
    }

    pub(crate) async fn es_put_ack(&self, ack: &AlertAck) -> Result<(), StoreError> {
        let id = format!("ack:{}", ack.alert_id);
        self.bulk_one(
            json!({"index": {"_index": self.silences_index(), "_id": id}}),
            Some(&Doc::Ack(ack.clone())),
            &id,
        )
        .await
    }

    /// Deletes the silences index (tests against a shared cluster clean up with it).
    pub async fn delete_silences_index(&self) -> Result<(), StoreError> {
        self.json(
            Method::Delete,
            &format!("/{}", self.silences_index()),
            &[("ignore_unavailable", "true")],
            None,
        )
        .await
        .map(|_| ())
    }

    async fn es_docs(&self) -> Result<Vec<Doc>, StoreError> {
        let answer = self
            .search(
                &self.silences_index(),
                &json!({"size": MAX_SILENCES, "query": {"match_all": {}}}),
            )
            .await?;
        let hits = answer
            .get("hits")
            .and_then(|h| h.get("hits"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        hits.into_iter()
            .map(|h| {
                let id = h
                    .get("_id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                serde_json::from_value(h.get("_source").cloned().unwrap_or(Value::Null)).map_err(
                    |e| StoreError::Corrupt {
                        id,
                        message: e.to_string(),
                    },
                )
            })
            .collect()
    }

    pub(crate) async fn es_list_silences(&self) -> Result<Vec<Silence>, StoreError> {
        let mut out: Vec<Silence> = self
            .es_docs()
            .await?
            .into_iter()
            .filter_map(|d| match d {
                Doc::Silence(s) => Some(s),
                Doc::Ack(_) => None,
            })
            .collect();
        sort_silences(&mut out);
        Ok(out)
    }

    pub(crate) async fn es_list_acks(&self) -> Result<Vec<AlertAck>, StoreError> {
        let mut out: Vec<AlertAck> = self
            .es_docs()
            .await?
            .into_iter()
            .filter_map(|d| match d {
                Doc::Ack(a) => Some(a),
                Doc::Silence(_) => None,
            })
            .collect();
        sort_acks(&mut out);
        Ok(out)
    }
}
