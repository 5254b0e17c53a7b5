//! Silences and acks in Elasticsearch: one `{prefix}-dlog-silences` index, documents
//! `silence:<id>` and `ack:<alert id>` with a `kind` field, written with `refresh=wait_for`
//! (they are few and read back at once). Each kind is listed latest first, a scroll page at a
//! time, up to [`MAX_SILENCES`]; retention prunes the ones that ended (or were made) longer
//! ago than the retention age.

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

    /// Deletes the silences that ended, and the acks made, before `cutoff_unix_nano`.
    pub(crate) async fn es_prune_silences(&self, cutoff_unix_nano: u64) -> Result<(), StoreError> {
        let query = json!({"query": {"bool": {
            "should": [
                {"range": {"ends_unix_nano": {"lt": cutoff_unix_nano}}},
                {"range": {"acked_unix_nano": {"lt": cutoff_unix_nano}}}
            ],
            "minimum_should_match": 1
        }}});
        let path = format!("/{}/_delete_by_query", self.silences_index());
        let (status, bytes) = self
            .call(
                Method::Post,
                &path,
                &[
                    ("ignore_unavailable", "true"),
                    ("allow_no_indices", "true"),
                    ("conflicts", "proceed"),
                    ("refresh", "true"),
                ],
                Some(serde_json::to_vec(&query).unwrap_or_default()),
                false,
            )
            .await?;
        // No index yet: nothing to prune.
        if (200..300).contains(&status) || status == 404 {
            return Ok(());
        }
        let text: String = String::from_utf8_lossy(&bytes).chars().take(1000).collect();
        let m = format!(
            "{} {path} (pruning silences): HTTP {status}: {text}",
            self.url
        );
        Err(if retryable_status(status) {
            StoreError::Unavailable(m)
        } else {
            StoreError::Refused(m)
        })
    }

    /// The documents having `field`, latest `field` first, a scroll page at a time, up to
    /// [`MAX_SILENCES`].
    async fn es_docs(&self, field: &str) -> Result<Vec<Doc>, StoreError> {
        let page = self.page.min(MAX_SILENCES);
        let body = json!({
            "size": page,
            "query": {"exists": {"field": field}},
            "sort": [{field: {"order": "desc", "unmapped_type": "long"}}],
        });
        let mut answer = self
            .json(
                Method::Post,
                &format!("/{}/_search", self.silences_index()),
                &[
                    ("scroll", "1m"),
                    ("ignore_unavailable", "true"),
                    ("allow_no_indices", "true"),
                ],
                Some(&body),
            )
            .await?;
        let mut out = Vec::new();
        let mut scroll_id: Option<String> = None;
        let result = loop {
            if let Some(id) = answer.get("_scroll_id").and_then(Value::as_str) {
                scroll_id = Some(id.to_string());
            }
            let hits = match Self::docs_of(&answer) {
                Ok(hits) => hits,
                Err(e) => break Err(e),
            };
            let n = hits.len();
            out.extend(hits);
            if n < page || out.len() >= MAX_SILENCES {
                break Ok(());
            }
            let Some(id) = &scroll_id else {
                break Ok(());
            };
            answer = match self
                .json(
                    Method::Post,
                    "/_search/scroll",
                    &[],
                    Some(&json!({"scroll": "1m", "scroll_id": id})),
                )
                .await
            {
                Ok(a) => a,
                Err(e) => break Err(e),
            };
        };
        if let Some(id) = scroll_id {
            // Frees the search context now rather than when it times out; a failure costs
            // nothing but that.
            let _ = self
                .json(
                    Method::Delete,
                    "/_search/scroll",
                    &[],
                    Some(&json!({"scroll_id": id})),
                )
                .await;
        }
        result?;
        out.truncate(MAX_SILENCES);
        Ok(out)
    }

    fn docs_of(answer: &Value) -> Result<Vec<Doc>, StoreError> {
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
            .es_docs("ends_unix_nano")
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
            .es_docs("acked_unix_nano")
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
