//! Routing, keying and splitting: one OTLP export request in, Kafka records out.
//!
//! * Spans go to the trace topic, one record per trace, keyed by the trace id in lowercase
//!   hex. A trace's spans keep the resource and scope they came with.
//! * Log records go to the service-logs topic, keyed by trace id when they carry one and by
//!   service instance otherwise, one record per key.
//! * Registration and heartbeat events go to the heartbeat topic, keyed by service instance.
//! * A record whose value, key and headers would exceed `max_message_bytes` is split into
//!   several records with the same key. A single span or log record that cannot fit even
//!   alone is rejected with a reason, and the rest of the request goes on.
//!
//! Two inputs share this logic. Protobuf requests ([`Router::traces_protobuf`]) are read in
//! place by [`crate::wire`]: with the `otlp_proto` encoding a record is the request's own
//! resource, scope and span bytes under new framing, copied once, never decoded into structs.
//! Decoded requests ([`Router::traces`]; OTLP/JSON input, `otlp_json` output, and the rare
//! protobuf the slices cannot express) are written by prost. Both produce the same bytes for
//! the same request. Sizes under `otlp_proto` are exact, so splitting never re-encodes.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use dlog_core::encoding::{hex_id, is_empty_id, EncodeError, Encoding, Signal};
use dlog_core::model::resource_instance_key;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde::Serialize;

use crate::config::Config;
use crate::redact::Redactor;
use crate::signal::{Logs, OtlpSignal, OwnedEntry, Traces};
use crate::sink::{headers_len, OutRecord};
use crate::wire::{self, Parsed, RawItem, RawResource, WireError};

/// How many rejection reasons a partial-success message spells out before summarising.
const REASONS_SHOWN: usize = 3;

/// The records made from one request, and what was rejected.
#[derive(Debug, Default)]
pub struct Routed {
    /// Records to publish, in the order their keys first appear in the request.
    pub records: Vec<OutRecord>,
    /// Spans or log records the request held.
    pub received: u64,
    /// Items rejected (too large for one record, spans without a valid trace id or span id).
    pub rejected: u64,
    /// Why, for the partial-success response; empty when nothing was rejected.
    pub error_message: String,
    /// Encoded bytes of `records` (values, keys and headers).
    pub bytes: usize,
}

/// A protobuf request body that is not a valid export request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid protobuf {request}: {reason}")]
pub struct InvalidRequest {
    /// `ExportTraceServiceRequest` or `ExportLogsServiceRequest`.
    pub request: &'static str,
    /// What is wrong, and where.
    pub reason: String,
}

/// Turns export requests into records, following the record contract.
#[derive(Debug, Clone)]
pub struct Router {
    trace_topic: Arc<str>,
    service_topic: Arc<str>,
    heartbeat_topic: Arc<str>,
    encoding: Encoding,
    max_message_bytes: usize,
    /// Redacts sensitive attribute values (`redact_attributes`).
    redactor: Option<Arc<Redactor>>,
}

impl Router {
    /// A router with the topics, encoding, size limit and redaction of `config`.
    pub fn new(config: &Config) -> Router {
        Router {
            trace_topic: Arc::from(config.trace_logs_topic.as_str()),
            service_topic: Arc::from(config.service_logs_topic.as_str()),
            heartbeat_topic: Arc::from(config.heartbeat_logs_topic.as_str()),
            encoding: config.encoding,
            max_message_bytes: config.max_message_bytes,
            redactor: config.redact_attributes.then(|| {
                Arc::new(Redactor::new(
                    config.redact_extra_keys.iter().map(String::as_str),
                    config.redact_log_bodies,
                ))
            }),
        }
    }

    /// Routes spans: one record per trace (more when a trace exceeds the size limit), with
    /// sensitive attribute values redacted (on a copy, only when there are some). Without the
    /// per-request limits the receivers apply (`max_groups_per_request`, the in-flight budget).
    pub fn traces(&self, request: &ExportTraceServiceRequest) -> Routed {
        self.decoded::<Traces>(request)
    }

    /// Routes log records, with sensitive attribute values redacted (on a copy, only when
    /// there are some). Without the per-request limits, as [`Router::traces`].
    pub fn logs(&self, request: &ExportLogsServiceRequest) -> Routed {
        self.decoded::<Logs>(request)
    }

    /// Routes a protobuf-encoded `ExportTraceServiceRequest`, reading it in place when the
    /// output encoding is `otlp_proto`. Without the per-request limits, as [`Router::traces`].
    pub fn traces_protobuf(&self, bytes: &[u8]) -> Result<Routed, InvalidRequest> {
        self.protobuf::<Traces>(bytes)
    }

    /// Routes a protobuf-encoded `ExportLogsServiceRequest`, as [`Router::traces_protobuf`].
    pub fn logs_protobuf(&self, bytes: &[u8]) -> Result<Routed, InvalidRequest> {
        self.protobuf::<Logs>(bytes)
    }

    fn decoded<G: OtlpSignal>(&self, request: &G::Request) -> Routed {
        let routed = match &self.redactor {
            Some(redactor) if G::redact_matches(redactor, request) => {
                let mut copy = request.clone();
                G::redact(redactor, &mut copy);
                self.route_decoded::<G>(&copy, RouteLimits::NONE)
            }
            _ => self.route_decoded::<G>(request, RouteLimits::NONE),
        };
        unlimited(routed)
    }

    fn protobuf<G: OtlpSignal>(&self, bytes: &[u8]) -> Result<Routed, InvalidRequest> {
        match self.protobuf_within::<G>(bytes, RouteLimits::NONE) {
            Err(RouteError::Invalid(e)) => Err(e),
            other => Ok(unlimited(other)),
        }
    }

    /// Redacts a decoded request in place (when redaction is on).
    pub(crate) fn redact<G: OtlpSignal>(&self, request: &mut G::Request) {
        if let Some(redactor) = &self.redactor {
            G::redact(redactor, request);
        }
    }

    /// Routes a decoded (and already redacted) request within `limits`.
    pub(crate) fn route_decoded<G: OtlpSignal>(
        &self,
        request: &G::Request,
        limits: RouteLimits<'_>,
    ) -> Result<Routed, RouteError> {
        let view: Vec<OwnedView<'_, G>> = G::resource_entries(request)
            .iter()
            .map(|entry| {
                let (resource, schema_url, scopes) = G::resource_parts(entry);
                ResourceView {
                    resource: resource.map(Owned),
                    schema_url,
                    scopes: scopes
                        .iter()
                        .map(|entry| {
                            let (scope, schema_url, items) = G::scope_parts(entry);
                            ScopeView {
                                scope: scope.map(Owned),
                                schema_url,
                                items: items.iter().map(OwnedItem).collect(),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        self.route(
            &view,
            |item: &OwnedItem<'_, G>| G::classify(item.0),
            |r| resource_instance_key(view[r].resource.as_ref().map(|o| o.0)),
            Some(&encode_json::<G>),
            limits,
        )
    }

    /// Routes a protobuf export request within `limits`: read in place with `otlp_proto`,
    /// decoded otherwise (once its decoded size fits the allowance).
    pub(crate) fn protobuf_within<G: OtlpSignal>(
        &self,
        bytes: &[u8],
        limits: RouteLimits<'_>,
    ) -> Result<Routed, RouteError> {
        let request_name = G::SIGNAL.request_name();
        let in_place = self.encoding == Encoding::OtlpProto;
        let redactor = self.redactor.as_deref().filter(|_| in_place);
        let parsed = wire::parse_with(bytes, G::SIGNAL, redactor).map_err(invalid(request_name))?;
        let (resources, flagged) = match parsed {
            Parsed::Slices {
                resources, flagged, ..
            } if in_place => (resources, flagged),
            Parsed::Slices { messages, .. } | Parsed::NeedsFullDecode { messages } => {
                let decoded = decoded_size(bytes.len(), messages);
                let limits = limits.spend(decoded, bytes.len())?;
                let mut request = G::Request::decode(bytes)
                    .map_err(|e| invalid(request_name)(WireError::new(e.to_string())))?;
                self.redact::<G>(&mut request);
                return self
                    .route_decoded::<G>(&request, limits)
                    .map_err(|e| e.plus(decoded));
            }
        };
        let rewritten = self
            .redacted_parts::<G>(&resources, flagged)
            .map_err(invalid(request_name))?;
        let mut resources = resources;
        substitute(&mut resources, &rewritten);
        let view = raw_view(&resources, |item| RawItemPart::<G>::new(*item));
        self.route(
            &view,
            |item: &RawItemPart<'_, G>| G::classify_raw(&item.item, || item.describe()),
            |r| wire::instance_key(resources[r].resource),
            None,
            limits,
        )
    }

    /// The flagged parts of a sliced request, decoded, redacted and encoded again, in the
    /// order [`substitute`] puts them back. Nothing is decoded when nothing was flagged.
    fn redacted_parts<G: OtlpSignal>(
        &self,
        resources: &[RawResource<'_>],
        flagged: usize,
    ) -> Result<Vec<Vec<u8>>, WireError> {
        let Some(redactor) = self.redactor.as_deref().filter(|_| flagged > 0) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(flagged);
        for rv in resources {
            if let (true, Some(bytes)) = (rv.redact, rv.resource) {
                out.push(rewrite::<Resource>(bytes, |r| redactor.resource(r))?);
            }
            for sv in &rv.scopes {
                if let (true, Some(bytes)) = (sv.redact, sv.scope) {
                    out.push(rewrite::<InstrumentationScope>(bytes, |s| {
                        redactor.scope(s)
                    })?);
                }
                for item in sv.items.iter().filter(|i| i.redact) {
                    out.push(rewrite::<G::Item>(item.bytes, |item| {
                        G::redact_item(redactor, item)
                    })?);
                }
            }
        }
        Ok(out)
    }

    fn topic(&self, dest: Dest) -> &Arc<str> {
        match dest {
            Dest::Trace => &self.trace_topic,
            Dest::Service => &self.service_topic,
            Dest::Heartbeat => &self.heartbeat_topic,
        }
    }

    fn route<R: Part, S: Part, I: ItemPart>(
        &self,
        view: &[ResourceView<'_, R, S, I>],
        classify: impl Fn(&I) -> Result<(Dest, Classified), String>,
        instance_key: impl Fn(usize) -> String,
        json: Option<&JsonEncoder<'_, R, S, I>>,
        mut limits: RouteLimits<'_>,
    ) -> Result<Routed, RouteError> {
        let model = SizeModel::new(self.encoding);
        let mut routed = Routed::default();
        let mut rejections = Rejections::default();

        // Group items by (destination, key), remembering where each item sits.
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<IndexKey, usize, foldhash::fast::RandomState> = HashMap::default();
        let mut instances: Vec<String> = Vec::new();
        let mut instance_of_key: HashMap<String, u32> = HashMap::new();
        let mut rs_fixed = Vec::with_capacity(view.len());
        let mut ss_fixed = Vec::with_capacity(view.len());
        for (r, rv) in view.iter().enumerate() {
            rs_fixed.push(model.entry_fixed(rv.resource.as_ref(), rv.schema_url));
            ss_fixed.push(
                rv.scopes
                    .iter()
                    .map(|sv| model.entry_fixed(sv.scope.as_ref(), sv.schema_url))
                    .collect::<Vec<_>>(),
            );
            let mut instance: Option<u32> = None;
            for (s, sv) in rv.scopes.iter().enumerate() {
                for (i, item) in sv.items.iter().enumerate() {
                    routed.received += 1;
                    let (dest, classified) = match classify(item) {
                        Ok(c) => c,
                        Err(reason) => {
                            rejections.add(reason);
                            continue;
                        }
                    };
                    let key = match classified {
                        Classified::Trace(id) => GroupKey::Trace(id),
                        Classified::Instance => {
                            GroupKey::Instance(*instance.get_or_insert_with(|| {
                                let name = instance_key(r);
                                let next = instances.len() as u32;
                                *instance_of_key.entry(name.clone()).or_insert_with(|| {
                                    instances.push(name);
                                    next
                                })
                            }))
                        }
                    };
                    let g = match index.entry(IndexKey(dest, key)) {
                        Entry::Occupied(e) => *e.get(),
                        Entry::Vacant(e) => {
                            if groups.len() >= limits.max_groups {
                                return Err(RouteError::TooManyGroups {
                                    max: limits.max_groups,
                                });
                            }
                            groups.push(Group {
                                dest,
                                key,
                                members: Vec::new(),
                            });
                            *e.insert(groups.len() - 1)
                        }
                    };
                    let len = item.wire_len();
                    groups[g].members.push(Member {
                        r: r as u32,
                        s: s as u32,
                        i: i as u32,
                        len,
                        size: model.item_size(item, len),
                    });
                }
            }
        }

        let layout = Layout {
            view,
            rs_fixed: &rs_fixed,
            ss_fixed: &ss_fixed,
            model,
        };
        let headers = headers_len(self.encoding, I::SIGNAL);
        let key_len = |key: GroupKey| match key {
            GroupKey::Trace(_) => 32,
            GroupKey::Instance(n) => instances[n as usize].len(),
        };
        // Every record's size before any is made: shared resources and scopes are copied into
        // each record, so a request's records can be far larger than the request.
        let mut packed = Vec::with_capacity(groups.len());
        let mut needed = groups.len().saturating_mul(GROUP_OVERHEAD);
        for group in &groups {
            let key = key_len(group.key);
            let budget = self.max_message_bytes.saturating_sub(key + headers);
            let chunks = pack(&layout, &group.members, budget);
            for chunk in &chunks {
                if let Packed::Fits(range) = chunk {
                    needed = needed
                        .saturating_add(layout.size(&group.members[range.clone()]) + key + headers);
                }
            }
            packed.push(chunks);
        }
        if needed > limits.allowance && !limits.grow.as_mut().is_some_and(|grow| grow(needed)) {
            return Err(RouteError::NeedsBytes { needed });
        }
        for (group, chunks) in groups.iter().zip(packed) {
            let key = match group.key {
                GroupKey::Trace(id) => hex_id(&id),
                GroupKey::Instance(n) => instances[n as usize].clone(),
            };
            for chunk in chunks {
                match chunk {
                    Packed::Fits(range) => self.emit(
                        &layout,
                        json,
                        group,
                        &key,
                        &group.members[range],
                        &mut routed,
                        &mut rejections,
                    ),
                    Packed::TooLarge(m) => rejections.add(too_large(
                        &layout,
                        &group.members[m],
                        self.max_message_bytes,
                    )),
                }
            }
        }
        routed.rejected = rejections.count;
        routed.error_message = rejections.message(I::NOUN, routed.received);
        Ok(routed)
    }

    /// Encodes `members` as one record; when the encoded record is over the limit (the JSON
    /// size model is an estimate), halves it and tries again.
    #[allow(clippy::too_many_arguments)]
    fn emit<R: Part, S: Part, I: ItemPart>(
        &self,
        layout: &Layout<'_, '_, R, S, I>,
        json: Option<&JsonEncoder<'_, R, S, I>>,
        group: &Group,
        key: &str,
        members: &[Member],
        routed: &mut Routed,
        rejections: &mut Rejections,
    ) {
        let value = match self.encoding {
            Encoding::OtlpProto => Ok(layout.encode_proto(members)),
            Encoding::OtlpJson => match json {
                Some(encode) => encode(layout, members),
                None => Err(EncodeError::Json(serde::ser::Error::custom(
                    "requests read in place are only routed with the otlp_proto encoding",
                ))),
            },
        };
        let value = match value {
            Ok(v) => v,
            Err(e) => {
                for m in members {
                    rejections.add(format!(
                        "{} cannot be encoded: {e}",
                        layout.item(m).describe()
                    ));
                }
                return;
            }
        };
        let record = OutRecord {
            topic: self.topic(group.dest).clone(),
            key: key.to_string(),
            value,
            encoding: self.encoding,
            signal: I::SIGNAL,
        };
        if record.size() <= self.max_message_bytes {
            routed.bytes += record.size();
            routed.records.push(record);
        } else if members.len() > 1 {
            let (a, b) = members.split_at(members.len() / 2);
            self.emit(layout, json, group, key, a, routed, rejections);
            self.emit(layout, json, group, key, b, routed, rejections);
        } else {
            rejections.add(format!(
                "{} needs {} bytes on its own, over max_message_bytes {} (key and headers included)",
                layout.item(&members[0]).describe(),
                record.size(),
                self.max_message_bytes
            ));
        }
    }
}

/// Bytes that decoded OTLP structs take at most per protobuf message or JSON object: the
/// largest struct (a span), four times over for the vector holding it (which doubles as it
/// grows, and holds at least 4 elements once it holds one: a request of one-span entries
/// allocates 4 spans per span).
pub(crate) const DECODED_MESSAGE_BYTES: usize = 4 * max_size(&[
    std::mem::size_of::<Span>(),
    std::mem::size_of::<LogRecord>(),
    std::mem::size_of::<ResourceSpans>(),
    std::mem::size_of::<ResourceLogs>(),
    std::mem::size_of::<ScopeSpans>(),
    std::mem::size_of::<ScopeLogs>(),
    std::mem::size_of::<opentelemetry_proto::tonic::common::v1::KeyValue>(),
    std::mem::size_of::<opentelemetry_proto::tonic::common::v1::AnyValue>(),
    std::mem::size_of::<opentelemetry_proto::tonic::trace::v1::span::Event>(),
    std::mem::size_of::<opentelemetry_proto::tonic::trace::v1::span::Link>(),
]);

const fn max_size(sizes: &[usize]) -> usize {
    let mut max = 0;
    let mut i = 0;
    while i < sizes.len() {
        if sizes[i] > max {
            max = sizes[i];
        }
        i += 1;
    }
    max
}

/// An upper bound of what a protobuf request of `len` bytes and `messages` messages takes
/// once decoded: a struct per message, and at most its own length in strings and bytes.
pub(crate) fn decoded_size(len: usize, messages: usize) -> usize {
    len.saturating_add(messages.saturating_mul(DECODED_MESSAGE_BYTES))
}

/// Bookkeeping bytes per group (trace, or key of logs) while a request is routed: the group
/// and its index entry, its packing, and its record's struct and key.
pub(crate) const GROUP_OVERHEAD: usize = 512;

/// Limits that hold for one request's routing.
pub(crate) struct RouteLimits<'g> {
    /// Distinct groups (traces, or keys of logs) the request may make.
    pub max_groups: usize,
    /// Bytes the request may take on top of its body and per-item bookkeeping: decoded
    /// structs when it must be decoded, and its records.
    pub allowance: usize,
    /// Asked, when the records need `n` bytes beyond the allowance, to reserve them at once
    /// without waiting (true when it did): then routing goes on instead of returning
    /// [`RouteError::NeedsBytes`] to be run again after a reservation.
    pub grow: Option<&'g mut dyn FnMut(usize) -> bool>,
}

impl RouteLimits<'_> {
    /// No limits (the public routing functions).
    pub const NONE: RouteLimits<'static> = RouteLimits {
        max_groups: usize::MAX,
        allowance: usize::MAX,
        grow: None,
    };

    /// What is left after `spent` bytes, or how much is needed in all (`spent`, and a guess
    /// of `then` more for what comes after).
    fn spend(self, spent: usize, then: usize) -> Result<Self, RouteError> {
        match self.allowance.checked_sub(spent) {
            Some(allowance) => Ok(RouteLimits { allowance, ..self }),
            None => Err(RouteError::NeedsBytes {
                needed: spent.saturating_add(then),
            }),
        }
    }
}

/// Why a request was not routed within its limits.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteError {
    /// Not a valid request.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// More distinct trace ids or keys than `max_groups_per_request`.
    #[error("the request holds more than max_groups_per_request ({max}) distinct trace ids and log keys; send smaller batches or raise the setting")]
    TooManyGroups {
        /// The limit.
        max: usize,
    },
    /// Routing needs `needed` bytes on top of the body and bookkeeping, more than the
    /// allowance: reserve them and route again (or refuse the request).
    #[error("routing the request needs {needed} bytes beyond its body")]
    NeedsBytes {
        /// Bytes needed in all.
        needed: usize,
    },
}

impl RouteError {
    /// The same error after `spent` more bytes were needed before it.
    fn plus(self, spent: usize) -> RouteError {
        match self {
            RouteError::NeedsBytes { needed } => RouteError::NeedsBytes {
                needed: needed.saturating_add(spent),
            },
            other => other,
        }
    }
}

/// The routing of a request without limits, which can only fail for limits: a refusal
/// there becomes a rejection of every item, never a panic.
fn unlimited(result: Result<Routed, RouteError>) -> Routed {
    result.unwrap_or_else(|e| Routed {
        error_message: e.to_string(),
        ..Routed::default()
    })
}

fn invalid(request: &'static str) -> impl Fn(WireError) -> RouteError {
    move |e| {
        RouteError::Invalid(InvalidRequest {
            request,
            reason: e.to_string(),
        })
    }
}

/// Decodes one validated part, applies `redact`, and encodes it again.
fn rewrite<M: Message + Default>(
    bytes: &[u8],
    redact: impl FnOnce(&mut M),
) -> Result<Vec<u8>, WireError> {
    let mut message = M::decode(bytes)
        .map_err(|e| WireError::new(format!("cannot decode a part to redact it: {e}")))?;
    redact(&mut message);
    Ok(message.encode_to_vec())
}

/// Points the flagged parts of `resources` at their redacted encodings, taken from `parts`
/// in the order [`Router::redacted_parts`] made them.
fn substitute<'a>(resources: &mut [RawResource<'a>], parts: &'a [Vec<u8>]) {
    if parts.is_empty() {
        return;
    }
    let mut next = parts.iter();
    for rv in resources {
        if rv.redact && rv.resource.is_some() {
            if let Some(part) = next.next() {
                rv.resource = Some(part);
            }
        }
        for sv in &mut rv.scopes {
            if sv.redact && sv.scope.is_some() {
                if let Some(part) = next.next() {
                    sv.scope = Some(part);
                }
            }
            for item in sv.items.iter_mut().filter(|i| i.redact) {
                if let Some(part) = next.next() {
                    item.bytes = part;
                }
            }
        }
    }
}

/// A span needs a valid trace id (its key) and span id: the stages identify a span by the
/// two, so spans without a span id of their own would overwrite each other downstream.
pub(crate) fn classify_span(
    trace_id: &[u8],
    span_id: &[u8],
    describe: impl FnOnce() -> String,
) -> Result<(Dest, Classified), String> {
    let trace = match <[u8; 16]>::try_from(trace_id) {
        Ok(id) if !is_empty_id(&id) => id,
        _ => {
            return Err(format!(
                "{} has no valid trace_id (OTLP requires 16 bytes, not all zero)",
                describe()
            ))
        }
    };
    if span_id.len() != 8 || is_empty_id(span_id) {
        return Err(format!(
            "{} has no valid span_id (OTLP requires 8 bytes, not all zero)",
            describe()
        ));
    }
    Ok((Dest::Trace, Classified::Trace(trace)))
}

pub(crate) fn classify_log(trace_id: &[u8], heartbeat: bool) -> (Dest, Classified) {
    if heartbeat {
        return (Dest::Heartbeat, Classified::Instance);
    }
    match <[u8; 16]>::try_from(trace_id) {
        Ok(id) if !is_empty_id(&id) => (Dest::Service, Classified::Trace(id)),
        _ => (Dest::Service, Classified::Instance),
    }
}

fn raw_view<'a, I>(
    resources: &[wire::RawResource<'a>],
    item: impl Fn(&RawItem<'a>) -> I,
) -> Vec<ResourceView<'a, RawPart<'a>, RawPart<'a>, I>> {
    resources
        .iter()
        .map(|rv| ResourceView {
            resource: rv.resource.map(RawPart),
            schema_url: rv.schema_url,
            scopes: rv
                .scopes
                .iter()
                .map(|sv| ScopeView {
                    scope: sv.scope.map(RawPart),
                    schema_url: sv.schema_url,
                    items: sv.items.iter().map(&item).collect(),
                })
                .collect(),
        })
        .collect()
}

fn too_large<R: Part, S: Part, I: ItemPart>(
    layout: &Layout<'_, '_, R, S, I>,
    member: &Member,
    max: usize,
) -> String {
    let model = layout.model;
    let alone = model.request(model.frame(
        layout.rs_fixed[member.r as usize]
            + model.frame(layout.ss_fixed[member.r as usize][member.s as usize] + member.size),
    ));
    format!(
        "{} needs about {alone} bytes on its own, over max_message_bytes {max} (key and headers included)",
        layout.item(member).describe()
    )
}

/// The topic an item goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dest {
    Trace,
    Service,
    Heartbeat,
}

/// What an item is keyed by, before the instance name is looked up.
pub(crate) enum Classified {
    Trace([u8; 16]),
    Instance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum GroupKey {
    Trace([u8; 16]),
    /// Index into the request's distinct instance keys.
    Instance(u32),
}

/// What groups are looked up by. Trace ids come from senders, so the index hashes them with a
/// randomly seeded hasher ([`foldhash::fast::RandomState`], a fresh seed per map): an
/// unkeyed hash let crafted ids all land in one bucket and made grouping quadratic.
#[derive(Debug, Clone, Copy, Eq)]
struct IndexKey(Dest, GroupKey);

impl std::hash::Hash for IndexKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        #[cfg(test)]
        tests::KEY_COMPARISONS.with(|c| c.set(c.get() + 1));
        self.0 == other.0 && self.1 == other.1
    }
}

struct Group {
    dest: Dest,
    key: GroupKey,
    members: Vec<Member>,
}

/// Where an item sits in the request, its encoded length, and its framed size under the
/// size model.
#[derive(Debug, Clone, Copy)]
struct Member {
    r: u32,
    s: u32,
    i: u32,
    len: usize,
    size: usize,
}

struct ResourceView<'a, R, S, I> {
    resource: Option<R>,
    schema_url: &'a str,
    scopes: Vec<ScopeView<'a, S, I>>,
}

struct ScopeView<'a, S, I> {
    scope: Option<S>,
    schema_url: &'a str,
    items: Vec<I>,
}

/// A piece of a request that can be written as protobuf message content.
trait Part {
    /// Encoded length, without tag and length prefix.
    fn wire_len(&self) -> usize;
    /// Writes the encoded message (`wire_len` bytes).
    fn write(&self, buf: &mut Vec<u8>);
    /// OTLP/JSON length (only used with the `otlp_json` encoding).
    fn json_len(&self) -> usize;
}

/// A span or a log record.
trait ItemPart: Part {
    const SIGNAL: Signal;
    const NOUN: &'static str;
    fn describe(&self) -> String;
}

/// A decoded message.
struct Owned<'a, T>(&'a T);

impl<T> Clone for Owned<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Owned<'_, T> {}

impl<T: Message + Serialize> Part for Owned<'_, T> {
    fn wire_len(&self) -> usize {
        self.0.encoded_len()
    }

    fn write(&self, buf: &mut Vec<u8>) {
        // `encode_raw` is what `encode` calls after its capacity check, which a Vec never
        // fails; calling it directly spares a second walk over every attribute.
        self.0.encode_raw(buf);
    }

    fn json_len(&self) -> usize {
        json_len(self.0)
    }
}

/// A decoded span or log record.
struct OwnedItem<'a, G: OtlpSignal>(&'a G::Item);

impl<G: OtlpSignal> Part for OwnedItem<'_, G> {
    fn wire_len(&self) -> usize {
        Owned(self.0).wire_len()
    }

    fn write(&self, buf: &mut Vec<u8>) {
        Owned(self.0).write(buf);
    }

    fn json_len(&self) -> usize {
        Owned(self.0).json_len()
    }
}

impl<G: OtlpSignal> ItemPart for OwnedItem<'_, G> {
    const SIGNAL: Signal = G::SIGNAL;
    const NOUN: &'static str = G::NOUN;

    fn describe(&self) -> String {
        G::describe(self.0)
    }
}

/// An encoded message inside the request.
#[derive(Clone, Copy)]
struct RawPart<'a>(&'a [u8]);

impl Part for RawPart<'_> {
    fn wire_len(&self) -> usize {
        self.0.len()
    }

    fn write(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(self.0);
    }

    fn json_len(&self) -> usize {
        // Raw parts are only routed with the otlp_proto encoding.
        self.0.len()
    }
}

/// An encoded span or log record inside the request.
struct RawItemPart<'a, G> {
    item: RawItem<'a>,
    signal: PhantomData<fn() -> G>,
}

impl<'a, G> RawItemPart<'a, G> {
    fn new(item: RawItem<'a>) -> Self {
        RawItemPart {
            item,
            signal: PhantomData,
        }
    }
}

impl<G: OtlpSignal> Part for RawItemPart<'_, G> {
    fn wire_len(&self) -> usize {
        self.item.bytes.len()
    }

    fn write(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(self.item.bytes);
    }

    fn json_len(&self) -> usize {
        self.item.bytes.len()
    }
}

impl<G: OtlpSignal> ItemPart for RawItemPart<'_, G> {
    const SIGNAL: Signal = G::SIGNAL;
    const NOUN: &'static str = G::NOUN;

    fn describe(&self) -> String {
        // Only on the rejection path: decoding once is fine there.
        match G::Item::decode(self.item.bytes) {
            Ok(item) => G::describe(&item),
            Err(_) => format!("a {}", G::NOUN),
        }
    }
}

/// Builds an `otlp_json` value from the members of one record (decoded requests only).
type JsonEncoder<'j, R, S, I> =
    dyn Fn(&Layout<'_, '_, R, S, I>, &[Member]) -> Result<Vec<u8>, EncodeError> + 'j;

/// A view of a decoded request.
type OwnedView<'r, G> =
    ResourceView<'r, Owned<'r, Resource>, Owned<'r, InstrumentationScope>, OwnedItem<'r, G>>;

type OwnedLayout<'v, 'a, 'r, G> =
    Layout<'v, 'a, Owned<'r, Resource>, Owned<'r, InstrumentationScope>, OwnedItem<'r, G>>;

/// Encodes the members' resources, scopes and items, cloned into a request of the same
/// shape, as OTLP/JSON.
fn encode_json<G: OtlpSignal>(
    layout: &OwnedLayout<'_, '_, '_, G>,
    members: &[Member],
) -> Result<Vec<u8>, EncodeError> {
    let entries: Vec<OwnedEntry<G::Item>> = members
        .chunk_by(|a, b| a.r == b.r)
        .map(|resource_run| {
            let rv = &layout.view[resource_run[0].r as usize];
            let scopes = resource_run
                .chunk_by(|a, b| a.s == b.s)
                .map(|run| {
                    let sv = &rv.scopes[run[0].s as usize];
                    (
                        sv.scope.as_ref().map(|s| s.0.clone()),
                        sv.schema_url.to_string(),
                        run.iter()
                            .map(|m| sv.items[m.i as usize].0.clone())
                            .collect(),
                    )
                })
                .collect();
            (
                rv.resource.as_ref().map(|r| r.0.clone()),
                rv.schema_url.to_string(),
                scopes,
            )
        })
        .collect();
    G::encode(Encoding::OtlpJson, &G::assemble(entries))
}

/// How big the pieces of a record are under an encoding: exact for protobuf, a close
/// over-estimate for JSON (checked after encoding).
#[derive(Debug, Clone, Copy)]
enum SizeModel {
    Proto,
    Json,
}

impl SizeModel {
    fn new(encoding: Encoding) -> SizeModel {
        match encoding {
            Encoding::OtlpProto => SizeModel::Proto,
            Encoding::OtlpJson => SizeModel::Json,
        }
    }

    /// A nested message or list element of `n` bytes, with its framing.
    fn frame(self, n: usize) -> usize {
        match self {
            SizeModel::Proto => 1 + varint_len(n as u64) + n,
            SizeModel::Json => n + 1,
        }
    }

    /// A whole request whose resource entries take `n` bytes.
    fn request(self, n: usize) -> usize {
        match self {
            SizeModel::Proto => n,
            // `{"resourceSpans":[` + `]}`
            SizeModel::Json => n + 24,
        }
    }

    fn item_size<I: Part>(self, item: &I, wire_len: usize) -> usize {
        match self {
            SizeModel::Proto => self.frame(wire_len),
            SizeModel::Json => self.frame(item.json_len()),
        }
    }

    /// A resource or scope entry without its items.
    fn entry_fixed<P: Part>(self, part: Option<&P>, schema_url: &str) -> usize {
        match self {
            SizeModel::Proto => {
                part.map_or(0, |p| self.frame(p.wire_len())) + string_field(schema_url)
            }
            // `{"resource":..,"scopeSpans":[..],"schemaUrl":".."}`
            SizeModel::Json => part.map_or(0, Part::json_len) + json_len(schema_url) + 48,
        }
    }
}

fn varint_len(v: u64) -> usize {
    // Each varint byte carries 7 bits.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// A protobuf string field (tag < 16), omitted when empty as proto3 does.
fn string_field(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        1 + varint_len(s.len() as u64) + s.len()
    }
}

fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing OTLP messages cannot fail; an error only makes the estimate smaller, and
    // the encoded record is checked against the limit anyway.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Protobuf field keys (field number << 3 | wire type 2, length-delimited).
const FIELD_1_LEN: u8 = 0x0a;
const FIELD_2_LEN: u8 = 0x12;
const FIELD_3_LEN: u8 = 0x1a;

/// The request, and the framed sizes of its resources and scopes.
struct Layout<'v, 'a, R, S, I> {
    view: &'v [ResourceView<'a, R, S, I>],
    rs_fixed: &'v [usize],
    ss_fixed: &'v [Vec<usize>],
    model: SizeModel,
}

impl<R: Part, S: Part, I: ItemPart> Layout<'_, '_, R, S, I> {
    fn item(&self, m: &Member) -> &I {
        &self.view[m.r as usize].scopes[m.s as usize].items[m.i as usize]
    }

    /// Writes `members` as one `Export*ServiceRequest`, one resource entry per run of
    /// members from the same resource and one scope entry per run from the same scope.
    fn encode_proto(&self, members: &[Member]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.size(members));
        for resource_run in members.chunk_by(|a, b| a.r == b.r) {
            let r = resource_run[0].r as usize;
            let rv = &self.view[r];
            let scope_runs = resource_run.chunk_by(|a, b| a.s == b.s);
            let rs_inner = self.rs_fixed[r]
                + scope_runs
                    .clone()
                    .map(|run| self.model.frame(self.scope_inner(run)))
                    .sum::<usize>();
            buf.push(FIELD_1_LEN);
            put_varint(&mut buf, rs_inner as u64);
            if let Some(resource) = &rv.resource {
                buf.push(FIELD_1_LEN);
                put_part(&mut buf, resource, resource.wire_len());
            }
            for run in scope_runs {
                let sv = &rv.scopes[run[0].s as usize];
                buf.push(FIELD_2_LEN);
                put_varint(&mut buf, self.scope_inner(run) as u64);
                if let Some(scope) = &sv.scope {
                    buf.push(FIELD_1_LEN);
                    put_part(&mut buf, scope, scope.wire_len());
                }
                for m in run {
                    buf.push(FIELD_2_LEN);
                    put_part(&mut buf, &sv.items[m.i as usize], m.len);
                }
                put_string(&mut buf, sv.schema_url);
            }
            put_string(&mut buf, rv.schema_url);
        }
        buf
    }

    fn scope_inner(&self, run: &[Member]) -> usize {
        let first = run[0];
        self.ss_fixed[first.r as usize][first.s as usize]
            + run.iter().map(|m| m.size).sum::<usize>()
    }

    /// The size model's value size of `members` as one record.
    fn size(&self, members: &[Member]) -> usize {
        let mut total = 0;
        for resource_run in members.chunk_by(|a, b| a.r == b.r) {
            let r = resource_run[0].r as usize;
            let inner = self.rs_fixed[r]
                + resource_run
                    .chunk_by(|a, b| a.s == b.s)
                    .map(|run| self.model.frame(self.scope_inner(run)))
                    .sum::<usize>();
            total += self.model.frame(inner);
        }
        self.model.request(total)
    }
}

/// Length prefix and content of a part whose encoded length is `len`.
fn put_part<P: Part>(buf: &mut Vec<u8>, part: &P, len: usize) {
    put_varint(buf, len as u64);
    let before = buf.len();
    part.write(buf);
    debug_assert_eq!(buf.len() - before, len);
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    if !s.is_empty() {
        buf.push(FIELD_3_LEN);
        put_varint(buf, s.len() as u64);
        buf.extend_from_slice(s.as_bytes());
    }
}

enum Packed {
    /// These members make one record within the budget.
    Fits(Range<usize>),
    /// This member alone is over the budget.
    TooLarge(usize),
}

/// Cuts a group's members into consecutive runs whose records stay within `budget` bytes,
/// tracking the record size incrementally (O(1) per member).
fn pack<R: Part, S: Part, I: ItemPart>(
    layout: &Layout<'_, '_, R, S, I>,
    members: &[Member],
    budget: usize,
) -> Vec<Packed> {
    let model = layout.model;
    let mut out = Vec::new();
    let mut start = 0;
    // Size of the current record's finished resource entries.
    let mut closed = 0usize;
    // Inner size of the current resource entry without its open scope entry.
    let mut resource_inner = 0usize;
    // Inner size of the open scope entry.
    let mut scope_inner = 0usize;
    let mut open: Option<(u32, u32)> = None;
    let alone = |m: &Member| -> (usize, usize, usize, usize) {
        let ri = layout.rs_fixed[m.r as usize];
        let si = layout.ss_fixed[m.r as usize][m.s as usize] + m.size;
        (0, ri, si, model.request(model.frame(ri + model.frame(si))))
    };
    for (n, m) in members.iter().enumerate() {
        let (c, ri, si, total) = match open {
            None => alone(m),
            Some((r, s)) if r == m.r && s == m.s => {
                let si = scope_inner + m.size;
                (
                    closed,
                    resource_inner,
                    si,
                    model.request(closed + model.frame(resource_inner + model.frame(si))),
                )
            }
            Some((r, _)) if r == m.r => {
                let ri = resource_inner + model.frame(scope_inner);
                let si = layout.ss_fixed[m.r as usize][m.s as usize] + m.size;
                (
                    closed,
                    ri,
                    si,
                    model.request(closed + model.frame(ri + model.frame(si))),
                )
            }
            Some(_) => {
                let c = closed + model.frame(resource_inner + model.frame(scope_inner));
                let ri = layout.rs_fixed[m.r as usize];
                let si = layout.ss_fixed[m.r as usize][m.s as usize] + m.size;
                (
                    c,
                    ri,
                    si,
                    model.request(c + model.frame(ri + model.frame(si))),
                )
            }
        };
        if total <= budget {
            (closed, resource_inner, scope_inner) = (c, ri, si);
            open = Some((m.r, m.s));
            continue;
        }
        if open.is_some() {
            out.push(Packed::Fits(start..n));
        }
        let (c, ri, si, total) = alone(m);
        if total <= budget {
            start = n;
            (closed, resource_inner, scope_inner) = (c, ri, si);
            open = Some((m.r, m.s));
        } else {
            out.push(Packed::TooLarge(n));
            start = n + 1;
            open = None;
        }
    }
    if open.is_some() {
        out.push(Packed::Fits(start..members.len()));
    }
    out
}

#[derive(Default)]
struct Rejections {
    count: u64,
    reasons: Vec<String>,
}

impl Rejections {
    fn add(&mut self, reason: String) {
        self.count += 1;
        if self.reasons.len() < REASONS_SHOWN {
            self.reasons.push(reason);
        }
    }

    fn message(&self, noun: &str, received: u64) -> String {
        if self.count == 0 {
            return String::new();
        }
        let mut text = format!(
            "rejected {} of {received} {noun}s: {}",
            self.count,
            self.reasons.join("; ")
        );
        let unshown = self.count as usize - self.reasons.len();
        if unshown > 0 {
            text.push_str(&format!("; and {unshown} more"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use dlog_core::encoding::{decode_logs, decode_traces};

    /// Found by the `wire_structured` fuzz target: a request of many resource entries, each
    /// holding one scope entry with one span, decoded by prost into more than the
    /// decoded-size bound the router reserves, since a vector that holds one element
    /// allocates room for 4.
    #[test]
    fn regression_decoded_size_bound_one_span_entries_fit_the_reserved_bound() {
        use std::mem::size_of;
        let entry = ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![entry; 37],
        };
        let bytes = request.encode_to_vec();
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        // The heap the decoded request holds, from its vectors' capacities.
        let mut heap = decoded.resource_spans.capacity() * size_of::<ResourceSpans>();
        for rs in &decoded.resource_spans {
            heap += rs.scope_spans.capacity() * size_of::<ScopeSpans>();
            for ss in &rs.scope_spans {
                heap += ss.spans.capacity() * size_of::<Span>();
                for span in &ss.spans {
                    heap += span.trace_id.capacity() + span.span_id.capacity();
                }
            }
        }
        let messages = match wire::parse_with(&bytes, Signal::Traces, None).unwrap() {
            Parsed::Slices { messages, .. } | Parsed::NeedsFullDecode { messages } => messages,
        };
        let bound = decoded_size(bytes.len(), messages);
        assert!(heap <= bound, "decoded {heap} bytes, bound {bound}");
    }
    /// `EntityRef.id_keys` and `description_keys` are repeated strings: each empty one is 2
    /// bytes on the wire and a 24-byte `String` in a growing vector once decoded, which the
    /// decoded-size bound did not count. Measured with a counting allocator, on the path that
    /// decodes with prost.
    #[test]
    fn regression_decoded_size_bound_counts_entity_key_names() {
        use opentelemetry_proto::tonic::common::v1::EntityRef;
        for (id_keys, description_keys, entities) in [(20_000, 0, 1), (0, 20_000, 1), (3, 5, 2000)]
        {
            let entity = EntityRef {
                r#type: "service".into(),
                id_keys: vec![String::new(); id_keys],
                description_keys: vec![String::new(); description_keys],
                ..Default::default()
            };
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(Resource {
                        entity_refs: vec![entity; entities],
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
            };
            let bytes = request.encode_to_vec();
            let messages = match wire::parse_with(&bytes, Signal::Traces, None).unwrap() {
                Parsed::Slices { messages, .. } | Parsed::NeedsFullDecode { messages } => messages,
            };
            let bound = decoded_size(bytes.len(), messages);
            let mut decoded = None;
            let peak = allocation_counter::measure(|| {
                decoded = Some(ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap());
            })
            .bytes_max;
            assert_eq!(decoded.as_ref(), Some(&request));
            assert!(
                peak <= bound as u64,
                "{id_keys} id keys, {description_keys} description keys in {entities} entities: \
                 decoded {peak} bytes, bound {bound} ({} body bytes)",
                bytes.len()
            );
        }
    }

    use dlog_core::names;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};

    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn resource(service: &str, instance: &str) -> Option<Resource> {
        Some(Resource {
            attributes: vec![
                kv(names::SERVICE_NAME, service),
                kv(names::SERVICE_INSTANCE_ID, instance),
            ],
            ..Default::default()
        })
    }

    fn span(trace: u8, id: u8, payload: usize) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            name: format!("op-{id}"),
            attributes: vec![kv("payload", &"x".repeat(payload))],
            ..Default::default()
        }
    }

    fn scope(name: &str) -> Option<InstrumentationScope> {
        Some(InstrumentationScope {
            name: name.into(),
            ..Default::default()
        })
    }

    fn router(encoding: Encoding, max: usize) -> Router {
        Router::new(&Config {
            encoding,
            max_message_bytes: max,
            ..Config::default()
        })
    }

    /// Two resources, two scopes in the first, three traces interleaved.
    fn mixed_request() -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: resource("a", "a-1"),
                    schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                    scope_spans: vec![
                        ScopeSpans {
                            scope: scope("http"),
                            spans: vec![span(1, 1, 10), span(2, 2, 10), span(1, 3, 10)],
                            schema_url: "s".into(),
                        },
                        ScopeSpans {
                            scope: None,
                            spans: vec![span(3, 4, 10)],
                            schema_url: String::new(),
                        },
                    ],
                },
                ResourceSpans {
                    resource: resource("b", "b-1"),
                    schema_url: String::new(),
                    scope_spans: vec![ScopeSpans {
                        scope: scope("db"),
                        spans: vec![span(1, 5, 10)],
                        schema_url: String::new(),
                    }],
                },
            ],
        }
    }

    fn span_ids(request: &ExportTraceServiceRequest) -> Vec<u8> {
        request
            .resource_spans
            .iter()
            .flat_map(|rs| rs.scope_spans.iter())
            .flat_map(|ss| ss.spans.iter())
            .map(|s| s.span_id[0])
            .collect()
    }

    #[test]
    fn one_record_per_trace_keyed_by_hex_trace_id_keeping_resource_and_scope() {
        for encoding in [Encoding::OtlpProto, Encoding::OtlpJson] {
            let routed = router(encoding, 1_000_000).traces(&mixed_request());
            assert_eq!(routed.received, 5);
            assert_eq!(routed.rejected, 0);
            let keys: Vec<&str> = routed.records.iter().map(|r| r.key.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "01".repeat(16).as_str(),
                    "02".repeat(16).as_str(),
                    "03".repeat(16).as_str()
                ]
            );
            let first = decode_traces(encoding, &routed.records[0].value).unwrap();
            // Trace 1 spans two resources; its spans keep their own resource and scope.
            assert_eq!(first.resource_spans.len(), 2);
            assert_eq!(first.resource_spans[0].resource, resource("a", "a-1"));
            assert_eq!(
                first.resource_spans[0].schema_url,
                "https://opentelemetry.io/schemas/1.26.0"
            );
            assert_eq!(first.resource_spans[0].scope_spans[0].scope, scope("http"));
            assert_eq!(first.resource_spans[0].scope_spans[0].schema_url, "s");
            assert_eq!(first.resource_spans[1].resource, resource("b", "b-1"));
            assert_eq!(span_ids(&first), [1, 3, 5]);
            for r in &routed.records {
                assert_eq!(&*r.topic, "trace_logs");
                assert_eq!(r.encoding, encoding);
                assert_eq!(r.signal, Signal::Traces);
            }
        }
    }

    #[test]
    fn proto_values_are_byte_identical_to_prost_encoding() {
        let routed = router(Encoding::OtlpProto, 1_000_000).traces(&mixed_request());
        for record in &routed.records {
            let decoded = decode_traces(Encoding::OtlpProto, &record.value).unwrap();
            assert_eq!(decoded.encode_to_vec(), record.value);
        }
    }

    #[test]
    fn oversized_trace_is_split_under_the_limit_and_keeps_every_span() {
        for encoding in [Encoding::OtlpProto, Encoding::OtlpJson] {
            let spans: Vec<Span> = (1..=200).map(|i| span(7, i as u8, 300)).collect();
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: resource("a", "a-1"),
                    scope_spans: vec![ScopeSpans {
                        scope: scope("s"),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            let max = 8 * 1024;
            let routed = router(encoding, max).traces(&request);
            assert_eq!(routed.rejected, 0, "{}", routed.error_message);
            assert!(routed.records.len() > 1);
            let mut all = Vec::new();
            for r in &routed.records {
                assert!(r.size() <= max, "{} > {max}", r.size());
                assert_eq!(r.key, "07".repeat(16));
                all.extend(span_ids(&decode_traces(encoding, &r.value).unwrap()));
            }
            assert_eq!(all, (1..=200).map(|i| i as u8).collect::<Vec<_>>());
            // Packing is tight: no two neighbouring records would have fit in one.
            if encoding == Encoding::OtlpProto {
                for pair in routed.records.windows(2) {
                    assert!(pair[0].size() + pair[1].size() > max);
                }
            }
        }
    }

    #[test]
    fn a_span_too_big_alone_is_rejected_with_a_reason_and_the_rest_goes_through() {
        for encoding in [Encoding::OtlpProto, Encoding::OtlpJson] {
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: resource("a", "a-1"),
                    scope_spans: vec![ScopeSpans {
                        spans: vec![span(1, 1, 10), span(1, 2, 5000), span(2, 3, 10)],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            let routed = router(encoding, 2048).traces(&request);
            assert_eq!(routed.rejected, 1);
            assert!(
                routed.error_message.contains("0202020202020202")
                    && routed.error_message.contains("max_message_bytes 2048"),
                "{}",
                routed.error_message
            );
            let ids: Vec<u8> = routed
                .records
                .iter()
                .flat_map(|r| span_ids(&decode_traces(encoding, &r.value).unwrap()))
                .collect();
            assert_eq!(ids, [1, 3]);
        }
    }

    #[test]
    fn spans_without_trace_id_are_rejected() {
        let mut request = mixed_request();
        request.resource_spans[0].scope_spans[0].spans[1].trace_id = vec![0; 16];
        request.resource_spans[0].scope_spans[1].spans[0].trace_id = vec![];
        let routed = router(Encoding::OtlpProto, 1_000_000).traces(&request);
        assert_eq!(routed.rejected, 2);
        assert_eq!(routed.records.len(), 1);
        assert!(
            routed.error_message.contains("rejected 2 of 5 spans"),
            "{}",
            routed.error_message
        );
    }

    #[test]
    fn regression_spans_without_valid_span_id_are_rejected_in_both_paths() {
        let mut request = mixed_request();
        let spans = &mut request.resource_spans[0].scope_spans[0].spans;
        spans[0].span_id = vec![];
        spans[1].span_id = vec![0; 8];
        request.resource_spans[0].scope_spans[1].spans[0].span_id = vec![7; 4];
        let total: usize = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        for encoding in [Encoding::OtlpProto, Encoding::OtlpJson] {
            let router = router(encoding, 1_000_000);
            let decoded = router.traces(&request);
            assert_eq!(decoded.rejected, 3, "{encoding:?}");
            assert!(
                decoded.error_message.contains("no valid span_id")
                    && decoded
                        .error_message
                        .contains(&format!("rejected 3 of {total} spans")),
                "{}",
                decoded.error_message
            );
            let kept: usize = decoded
                .records
                .iter()
                .map(|r| span_ids(&decode_traces(encoding, &r.value).unwrap()).len())
                .sum();
            assert_eq!(kept, total - 3);
            let read = router.traces_protobuf(&request.encode_to_vec()).unwrap();
            assert_eq!(summary(&read), summary(&decoded), "{encoding:?}");
        }
    }

    fn log(body: &str, trace: Option<u8>, event: &str) -> LogRecord {
        LogRecord {
            time_unix_nano: 1,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(body.into())),
            }),
            trace_id: trace.map(|t| vec![t; 16]).unwrap_or_default(),
            span_id: trace.map(|t| vec![t; 8]).unwrap_or_default(),
            event_name: event.into(),
            ..Default::default()
        }
    }

    fn logs_request() -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![
                ResourceLogs {
                    resource: resource("a", "a-1"),
                    scope_logs: vec![ScopeLogs {
                        log_records: vec![
                            log("in trace", Some(9), ""),
                            log("no trace", None, ""),
                            log("up", None, names::REGISTRATION_EVENT),
                            log("beat", Some(9), names::HEARTBEAT_EVENT),
                            log("also no trace", None, ""),
                            log("call", None, names::SERVICE_CALL_EVENT),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                ResourceLogs {
                    // No instance id: keyed by service name.
                    resource: Some(Resource {
                        attributes: vec![kv(names::SERVICE_NAME, "b")],
                        ..Default::default()
                    }),
                    scope_logs: vec![ScopeLogs {
                        log_records: vec![log("b log", None, ""), log("b in trace", Some(9), "")],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn logs_keyed_by_trace_or_instance_and_heartbeats_routed_by_instance() {
        let routed = router(Encoding::OtlpProto, 1_000_000).logs(&logs_request());
        assert_eq!(routed.received, 8);
        let summary: Vec<(String, String, usize)> = routed
            .records
            .iter()
            .map(|r| {
                let decoded = decode_logs(Encoding::OtlpProto, &r.value).unwrap();
                let n = decoded
                    .resource_logs
                    .iter()
                    .flat_map(|rl| rl.scope_logs.iter())
                    .map(|sl| sl.log_records.len())
                    .sum();
                (r.topic.to_string(), r.key.clone(), n)
            })
            .collect();
        let trace = "09".repeat(16);
        assert_eq!(
            summary,
            [
                ("service_logs".to_string(), trace.clone(), 2),
                ("service_logs".to_string(), "a-1".to_string(), 3),
                ("heartbeat_logs".to_string(), "a-1".to_string(), 2),
                ("service_logs".to_string(), "b".to_string(), 1),
            ]
        );
        assert!(routed.records.iter().all(|r| r.signal == Signal::Logs));
    }

    #[test]
    fn empty_request_makes_no_records() {
        let routed =
            router(Encoding::OtlpProto, 1_000_000).traces(&ExportTraceServiceRequest::default());
        assert!(routed.records.is_empty());
        assert_eq!((routed.received, routed.rejected), (0, 0));
        assert!(routed.error_message.is_empty());
    }

    type Summary = (Vec<(String, String, Vec<u8>)>, u64, u64, String);

    fn summary(routed: &Routed) -> Summary {
        (
            routed
                .records
                .iter()
                .map(|r| (r.topic.to_string(), r.key.clone(), r.value.clone()))
                .collect(),
            routed.received,
            routed.rejected,
            routed.error_message.clone(),
        )
    }

    /// Reading protobuf in place must give exactly the records the decoded path gives.
    #[test]
    fn protobuf_path_matches_decoded_path() {
        let mut requests = vec![mixed_request()];
        // Sizes around varint boundaries, a too-big span and a span without trace id.
        let mut odd = mixed_request();
        let spans = &mut odd.resource_spans[0].scope_spans[0].spans;
        for (n, payload) in [90, 100, 110, 16_250, 16_300, 16_400, 5_000]
            .into_iter()
            .enumerate()
        {
            spans.push(span(4, 10 + n as u8, payload));
        }
        spans[1].trace_id.clear();
        requests.push(odd);
        for max in [1_000_000, 8 * 1024, 2048] {
            let router = router(Encoding::OtlpProto, max);
            for request in &requests {
                let decoded = router.traces(request);
                let read = router.traces_protobuf(&request.encode_to_vec()).unwrap();
                assert_eq!(summary(&read), summary(&decoded), "max {max}");
            }
        }
        let logs = logs_request();
        let router = router(Encoding::OtlpProto, 1_000_000);
        assert_eq!(
            summary(&router.logs_protobuf(&logs.encode_to_vec()).unwrap()),
            summary(&router.logs(&logs))
        );
        // With otlp_json output, protobuf input goes through the decoded path.
        let router = self::router(Encoding::OtlpJson, 1_000_000);
        assert_eq!(
            summary(
                &router
                    .traces_protobuf(&requests[0].encode_to_vec())
                    .unwrap()
            ),
            summary(&router.traces(&requests[0]))
        );
    }

    #[test]
    fn invalid_protobuf_is_refused_with_the_place() {
        let router = router(Encoding::OtlpProto, 1_000_000);
        let err = router.traces_protobuf(&[0x0a, 0x05, 0x01]).unwrap_err();
        assert_eq!(err.request, "ExportTraceServiceRequest");
        assert!(
            err.to_string()
                .starts_with("invalid protobuf ExportTraceServiceRequest"),
            "{err}"
        );
        assert!(router.logs_protobuf(b"\xff\xff\xff").is_err());
    }

    thread_local! {
        /// Key comparisons made by group-index lookups on this thread.
        pub(super) static KEY_COMPARISONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// The unkeyed hasher the group index used to have.
    #[derive(Default)]
    struct UnkeyedIdHasher(u64);

    const UNKEYED_MULTIPLIER: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    impl std::hash::Hasher for UnkeyedIdHasher {
        fn finish(&self) -> u64 {
            self.0
        }

        fn write(&mut self, bytes: &[u8]) {
            for chunk in bytes.chunks(8) {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                    .wrapping_mul(UNKEYED_MULTIPLIER);
            }
        }
    }

    fn unkeyed_hash(id: [u8; 16]) -> u64 {
        use std::hash::BuildHasher;
        std::hash::BuildHasherDefault::<UnkeyedIdHasher>::default()
            .hash_one(IndexKey(Dest::Trace, GroupKey::Trace(id)))
    }

    /// `n` distinct trace ids that all have the same hash under [`UnkeyedIdHasher`]: the id is
    /// the last thing hashed and the hasher has no final mix, so the second half of each id
    /// can cancel whatever the first half did.
    fn colliding_trace_ids(n: usize) -> Vec<[u8; 16]> {
        let mut inverse = UNKEYED_MULTIPLIER;
        for _ in 0..6 {
            inverse =
                inverse.wrapping_mul(2u64.wrapping_sub(UNKEYED_MULTIPLIER.wrapping_mul(inverse)));
        }
        assert_eq!(UNKEYED_MULTIPLIER.wrapping_mul(inverse), 1);
        let target = 0x0123_4567_89ab_cdefu64;
        (0..n as u64)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(i + 1).to_le_bytes());
                // With a zero second word, the hash is rotl(h1, 5) * M.
                let before_last = unkeyed_hash(id).wrapping_mul(inverse);
                id[8..].copy_from_slice(&(before_last ^ target).to_le_bytes());
                id
            })
            .collect()
    }

    #[test]
    fn regression_hash_flooding_crafted_trace_ids_group_in_linear_work() {
        let n = 20_000;
        let ids = colliding_trace_ids(n);
        let first = unkeyed_hash(ids[0]);
        assert!(
            ids.iter().all(|id| unkeyed_hash(*id) == first),
            "the crafted ids must collide under the old hasher"
        );
        let spans = ids
            .iter()
            .map(|id| Span {
                trace_id: id.to_vec(),
                span_id: vec![1; 8],
                ..Default::default()
            })
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource("a", "a-1"),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let router = router(Encoding::OtlpProto, 1_000_000);
        KEY_COMPARISONS.with(|c| c.set(0));
        let routed = router.traces_protobuf(&request.encode_to_vec()).unwrap();
        let comparisons = KEY_COMPARISONS.with(|c| c.get());
        // One record per trace, in request order.
        assert_eq!(routed.rejected, 0, "{}", routed.error_message);
        let keys: Vec<String> = routed.records.iter().map(|r| r.key.clone()).collect();
        let expected: Vec<String> = ids.iter().map(|id| hex_id(id)).collect();
        assert_eq!(keys, expected);
        // Every id is new, so a lookup compares keys only on a chance match of hash bits: far
        // fewer comparisons than ids. One bucket for all (the old hasher) needs n²/2.
        assert!(
            comparisons < n as u64,
            "{comparisons} key comparisons to group {n} traces"
        );
    }

    #[test]
    fn regression_unbounded_memory_records_are_sized_before_they_are_made() {
        // 100 one-span traces sharing a 10 KB resource: about 1 MB of records from 11 KB.
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("blob", &"x".repeat(10_000))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: (1..=100u8).map(|n| span(n, 1, 0)).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let bytes = request.encode_to_vec();
        let router = router(Encoding::OtlpProto, 1_000_000);
        let unlimited = router.traces_protobuf(&bytes).unwrap();
        assert!(unlimited.bytes > 100 * 10_000);
        let small = || RouteLimits {
            max_groups: usize::MAX,
            allowance: bytes.len(),
            grow: None,
        };
        let needed = match router.protobuf_within::<Traces>(&bytes, small()) {
            Err(RouteError::NeedsBytes { needed }) => needed,
            other => panic!("{other:?}"),
        };
        // Exactly the records, and the bookkeeping of their groups.
        assert_eq!(needed, unlimited.bytes + 100 * GROUP_OVERHEAD);
        let enough = RouteLimits {
            max_groups: 100,
            allowance: needed,
            grow: None,
        };
        let routed = router.protobuf_within::<Traces>(&bytes, enough).unwrap();
        assert_eq!(summary(&routed), summary(&unlimited));
        let too_few_groups = RouteLimits {
            max_groups: 99,
            allowance: usize::MAX,
            grow: None,
        };
        assert!(matches!(
            router.protobuf_within::<Traces>(&bytes, too_few_groups),
            Err(RouteError::TooManyGroups { max: 99 })
        ));
        // Decoded requests (JSON input) are limited the same way.
        assert!(matches!(
            router.route_decoded::<Traces>(&request, small()),
            Err(RouteError::NeedsBytes { needed: n }) if n == needed
        ));
        // Reserving at once what is asked lets routing go on without a second pass.
        let mut asked = Vec::new();
        let mut grow = |n: usize| {
            asked.push(n);
            true
        };
        let grown = RouteLimits {
            max_groups: usize::MAX,
            allowance: bytes.len(),
            grow: Some(&mut grow),
        };
        let routed = router.protobuf_within::<Traces>(&bytes, grown).unwrap();
        assert_eq!(summary(&routed), summary(&unlimited));
        assert_eq!(asked, [needed]);
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "{v}");
        }
    }
}
