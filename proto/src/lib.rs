//! dlog's own wire schemas. OTLP itself comes from the `opentelemetry-proto` crate; this
//! crate holds only what dlog defines: the alert event written to the `alerts` topic.
//!
//! ```
//! use dlog_proto::alert::v1::{AlertEvent, AlertState};
//! use prost::Message;
//!
//! let event = AlertEvent { id: "a1".into(), state: AlertState::Firing as i32, ..Default::default() };
//! let bytes = event.encode_to_vec();
//! assert_eq!(AlertEvent::decode(bytes.as_slice()).unwrap(), event);
//! ```

/// `dlog.alert.v1`.
pub mod alert {
    /// Version 1 of the alert schema.
    pub mod v1 {
        #![allow(missing_docs, clippy::doc_lazy_continuation)]
        include!(concat!(env!("OUT_DIR"), "/dlog.alert.v1.rs"));
    }
}
