//! An upper bound of the memory an OTLP/JSON body takes while `serde_json` decodes it into
//! `opentelemetry-proto` structs, from one pass over its bytes before anything is decoded, so
//! that the HTTP receiver can reserve it (or refuse the body) first.
//!
//! Three things are allocated while a body decodes:
//!
//! * **The decoded structs.** Each JSON object becomes one message, each array element one
//!   vector slot, and each string or byte field at most its own length: a struct per object
//!   ([`DECODED_MESSAGE_BYTES`], four times the largest struct, for a vector's spare room), a
//!   vector slot per array element or field ([`JSON_VALUE_BYTES`]) and the body once more.
//! * **Buffered copies of `AnyValue`s.** `opentelemetry-proto` deserializes an `AnyValue`
//!   through `#[serde(flatten)]`, which makes serde buffer the whole object, everything nested
//!   in it included, as `serde::__private::de::Content` (a 64-byte slot per object member, 32
//!   per array element, and a copy of each string that holds an escape) before decoding it.
//!   A nested `AnyValue` (in a `kvlistValue` or an `arrayValue`) is buffered again, from its
//!   parent's buffer, while the parent's is still held: a value nested `d` levels deep is
//!   held `d` times over. The `intValue` field is buffered once more (an untagged enum), and
//!   each member name of an `AnyValue` is copied once. So every object member, array element
//!   and string inside `d` nested `AnyValue`s is charged `d + 1` times its buffered size.
//! * **`serde_json`'s scratch buffer** for a string with escapes, and the error message of a
//!   body that fails (which may quote a string): bounded by the longest string, three times.
//!
//! Which objects are `AnyValue`s is read from the member names, as serde matches them: the
//! value of `value` (in a `KeyValue`) or `body` (in a `LogRecord`), and the elements of
//! `values` inside an `arrayValue`. A name written with an escape could be any of those and
//! is counted as all of them. Unknown members outside an `AnyValue` are skipped by serde
//! without allocating; inside one they are buffered like the rest, and charged.
//!
//! Nesting is bounded first: messages may nest [`MAX_MESSAGE_DEPTH`] levels below the request,
//! as protobuf decoding allows (each JSON object is one protobuf message), and arrays and
//! objects together [`MAX_JSON_DEPTH`] levels, the limit `serde_json` has anyway for what it
//! decodes. A body
//! nested deeper is refused before anything is reserved.

use std::mem::size_of;

use opentelemetry_proto::tonic::common::v1::{AnyValue, EntityRef, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use crate::route::DECODED_MESSAGE_BYTES;

/// Messages may nest this many levels below the request object (the request is depth 0), as
/// prost's recursion limit allows for protobuf requests.
pub(crate) const MAX_MESSAGE_DEPTH: usize = 100;

/// Arrays and objects may nest this many levels: `serde_json`'s own recursion limit for what
/// it decodes (it skips unknown members without one).
pub(crate) const MAX_JSON_DEPTH: usize = 128;

/// Bytes a decoded array element that is not an object may take: a `String` in a vector that
/// doubles as it grows (three slots per element while it moves, four for a vector of one).
pub(crate) const JSON_VALUE_BYTES: usize = 4 * size_of::<String>();

/// Size of one buffered member (`(Content, Content)`) of an object.
const CONTENT_MEMBER: usize = 64;
/// Size of one buffered array element (`Content`).
const CONTENT_ELEMENT: usize = 32;
/// Buffered bytes per object with members: room for 4 (a growing vector's first allocation).
const BUFFERED_OBJECT: usize = 4 * CONTENT_MEMBER;
/// Buffered bytes per member: a slot, and a growing vector's old and new room while it moves.
const BUFFERED_MEMBER: usize = 3 * CONTENT_MEMBER;
/// Buffered bytes per array: room for 4 elements, and its first element.
const BUFFERED_ARRAY: usize = 4 * CONTENT_ELEMENT + 3 * CONTENT_ELEMENT;
/// Buffered bytes per further array element.
const BUFFERED_ELEMENT: usize = 3 * CONTENT_ELEMENT;
/// Small allocations any decode makes (an error's box and message text).
const FIXED_BYTES: usize = 4096;

/// The body nests deeper than a decoder may follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TooDeep(pub String);

/// A member name, as far as the decoded size goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    /// `value` or `body`: an object here is an `AnyValue`, held inline by its parent.
    AnyValue,
    /// `arrayValue`: an object here is an `ArrayValue`, held inline by its `AnyValue`.
    ArrayValue,
    /// `intValue`: buffered once more when inside an `AnyValue`.
    IntValue,
    /// `kvlistValue`, `resource`, `scope`, `status`: an object here is held inline.
    Inline,
    /// `values`: `AnyValue`s inside an `ArrayValue`, `KeyValue`s inside a `KeyValueList`.
    Values,
    /// A repeated message field: an object here is an element of a vector of this many
    /// bytes per element.
    Elements(usize),
    /// Written with an escape: could be any name.
    Any,
    Other,
}

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

impl Name {
    fn of(raw: &[u8], escaped: bool) -> Name {
        if escaped {
            return Name::Any;
        }
        match raw {
            b"value" | b"body" => Name::AnyValue,
            b"arrayValue" => Name::ArrayValue,
            b"intValue" => Name::IntValue,
            b"kvlistValue" | b"resource" | b"scope" | b"status" => Name::Inline,
            b"values" => Name::Values,
            b"resourceSpans" => Name::Elements(size_of::<ResourceSpans>()),
            b"scopeSpans" => Name::Elements(size_of::<ScopeSpans>()),
            b"spans" => Name::Elements(size_of::<Span>()),
            b"events" => Name::Elements(size_of::<Event>()),
            b"links" => Name::Elements(size_of::<Link>()),
            b"attributes" => Name::Elements(size_of::<KeyValue>()),
            b"entityRefs" => Name::Elements(size_of::<EntityRef>()),
            b"resourceLogs" => Name::Elements(size_of::<ResourceLogs>()),
            b"scopeLogs" => Name::Elements(size_of::<ScopeLogs>()),
            b"logRecords" => Name::Elements(size_of::<LogRecord>()),
            _ => Name::Other,
        }
    }

    fn any_value(self) -> bool {
        matches!(self, Name::AnyValue | Name::Any)
    }

    fn array_value(self) -> bool {
        matches!(self, Name::ArrayValue | Name::Any)
    }

    fn int_value(self) -> bool {
        matches!(self, Name::IntValue | Name::Any)
    }

    fn values(self) -> bool {
        matches!(self, Name::Values | Name::Any)
    }

    /// Bytes a decoded object under this name takes beyond its members' own allocations:
    /// none when its parent holds it inline, four times its size as an element of a vector
    /// (which doubles as it grows, and holds 4 once it holds one), or the most any message
    /// takes.
    fn object_bytes(self) -> usize {
        match self {
            Name::AnyValue | Name::ArrayValue | Name::Inline => 0,
            Name::Elements(size) => 4 * size,
            Name::Values => 4 * max(size_of::<AnyValue>(), size_of::<KeyValue>()),
            Name::IntValue | Name::Any | Name::Other => DECODED_MESSAGE_BYTES,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    object: bool,
    /// An object that is (or may be) an `AnyValue`.
    any_value: bool,
    /// An object that is (or may be) an `ArrayValue`.
    array_value: bool,
    /// Opened as (or inside) the `intValue` of an `AnyValue`.
    int_value: bool,
    /// An array: whether its elements are (or may be) `AnyValue`s, and what an object
    /// element takes once decoded.
    any_values: bool,
    element_bytes: usize,
    /// In an object: the last member name, whether its value is next, and whether it has
    /// members (an empty one buffers nothing).
    name: Name,
    after_colon: bool,
    members: bool,
}

/// An upper bound of the bytes `serde_json` allocates to decode `body` into an OTLP export
/// request (see the module documentation), or why the body is refused before decoding.
pub(crate) fn json_decoded_size(body: &[u8]) -> Result<usize, TooDeep> {
    let mut stack: Vec<Frame> = Vec::with_capacity(MAX_JSON_DEPTH + 1);
    let mut objects = 0usize;
    // `AnyValue` objects open around the current position, and arrays and objects inside
    // the `intValue` of one.
    let mut any_values = 0usize;
    let mut int_values = 0usize;
    // The decoded structs and strings, all held at the end.
    let mut decoded = 0usize;
    // What the outermost `AnyValue` open now buffers (dropped when it is decoded, before the
    // next one starts), and the most any of them buffered.
    let mut buffered = 0usize;
    let mut most_buffered = 0usize;
    let mut longest = 0usize;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        // Buffered copies of a member or element here: one per enclosing `AnyValue`, one more
        // inside an `intValue`. Of a string: one more still (a member name of an `AnyValue`
        // is copied as it is matched; `stringValue` and `bytesValue` are read as a `String`).
        let copies = any_values + usize::from(int_values > 0);
        match b {
            b'"' => {
                let start = i + 1;
                let mut escaped = false;
                i = start;
                while i < body.len() && body[i] != b'"' {
                    if body[i] == b'\\' {
                        escaped = true;
                        i += 1;
                    }
                    i += 1;
                }
                let raw = &body[start..i.min(body.len())];
                longest = longest.max(raw.len());
                if any_values > 0 {
                    buffered = buffered.saturating_add((copies + 1).saturating_mul(raw.len()));
                }
                if let Some(frame) = stack.last_mut() {
                    if frame.object && !frame.after_colon {
                        frame.name = Name::of(raw, escaped);
                    }
                }
            }
            b'{' | b'[' => {
                if stack.len() >= MAX_JSON_DEPTH {
                    return Err(TooDeep(format!(
                        "the body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"
                    )));
                }
                let parent = stack.last().copied();
                let name = parent.filter(|p| p.object).map(|p| p.name);
                let int_value =
                    parent.is_some_and(|p| p.int_value || (p.any_value && p.name.int_value()));
                let frame = if b == b'{' {
                    objects += 1;
                    if objects > MAX_MESSAGE_DEPTH + 1 {
                        return Err(TooDeep(format!(
                            "the body nests messages more than {MAX_MESSAGE_DEPTH} levels below the request, the limit protobuf requests have too"
                        )));
                    }
                    let in_array = parent.filter(|p| !p.object);
                    decoded = decoded.saturating_add(match (name, in_array) {
                        (Some(name), _) => name.object_bytes(),
                        (None, Some(array)) => array.element_bytes,
                        (None, None) => DECODED_MESSAGE_BYTES,
                    });
                    Frame {
                        object: true,
                        any_value: name.is_some_and(Name::any_value)
                            || in_array.is_some_and(|a| a.any_values),
                        array_value: name.is_some_and(Name::array_value),
                        int_value,
                        any_values: false,
                        element_bytes: 0,
                        name: Name::Other,
                        after_colon: false,
                        members: false,
                    }
                } else {
                    decoded = decoded.saturating_add(JSON_VALUE_BYTES);
                    Frame {
                        object: false,
                        any_value: false,
                        array_value: false,
                        int_value,
                        any_values: parent
                            .is_some_and(|p| p.object && p.array_value && p.name.values()),
                        element_bytes: name.map_or(DECODED_MESSAGE_BYTES, Name::object_bytes),
                        name: Name::Other,
                        after_colon: false,
                        members: false,
                    }
                };
                any_values += usize::from(frame.any_value);
                int_values += usize::from(frame.int_value);
                if !frame.object {
                    let copies = any_values + usize::from(int_values > 0);
                    buffered = buffered.saturating_add(copies.saturating_mul(BUFFERED_ARRAY));
                }
                stack.push(frame);
            }
            b'}' | b']' => {
                if let Some(frame) = stack.pop() {
                    objects -= usize::from(frame.object);
                    any_values -= usize::from(frame.any_value);
                    int_values -= usize::from(frame.int_value);
                    if any_values == 0 {
                        most_buffered = most_buffered.max(buffered);
                        buffered = 0;
                    }
                }
            }
            b':' => {
                let mut size = BUFFERED_MEMBER;
                if let Some(frame) = stack.last_mut() {
                    frame.after_colon = true;
                    if !frame.members {
                        frame.members = true;
                        size += BUFFERED_OBJECT;
                    }
                }
                buffered = buffered.saturating_add(copies.saturating_mul(size));
            }
            b',' => match stack.last_mut() {
                Some(frame) if frame.object => frame.after_colon = false,
                _ => {
                    decoded = decoded.saturating_add(JSON_VALUE_BYTES);
                    buffered = buffered.saturating_add(copies.saturating_mul(BUFFERED_ELEMENT));
                }
            },
            _ => {}
        }
        i += 1;
    }
    // A body cut off inside an `AnyValue` has buffered what it holds so far.
    most_buffered = most_buffered.max(buffered);
    Ok(body
        .len()
        .saturating_add(decoded)
        .saturating_add(most_buffered)
        .saturating_add(longest.saturating_mul(3))
        .saturating_add(FIXED_BYTES))
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    use super::*;
    use crate::http::decode_json_message;

    /// The most bytes decoding `body` held at once on this thread (the decoded request
    /// included), as a trace request and as a logs request, whether or not it decodes.
    fn peaks(body: &[u8]) -> [(bool, u64); 2] {
        let mut traces = false;
        let t = allocation_counter::measure(|| {
            traces =
                decode_json_message::<ExportTraceServiceRequest>(body, "ExportTraceServiceRequest")
                    .is_ok();
        });
        let mut logs = false;
        let l = allocation_counter::measure(|| {
            logs =
                decode_json_message::<ExportLogsServiceRequest>(body, "ExportLogsServiceRequest")
                    .is_ok();
        });
        [(traces, t.bytes_max), (logs, l.bytes_max)]
    }

    /// Asserts that decoding `body` stays within the bound reserved for it; returns the
    /// larger peak and the bound. `decodes` says whether the trace (or logs) request must
    /// decode, so that a case cannot pass by failing early.
    fn within_bound(what: &str, body: &[u8], decodes: [Option<bool>; 2]) -> (u64, usize) {
        let bound = json_decoded_size(body).unwrap_or_else(|e| panic!("{what}: {}", e.0));
        let mut worst = 0;
        for ((ok, peak), want) in peaks(body).into_iter().zip(decodes) {
            if let Some(want) = want {
                assert_eq!(ok, want, "{what}: decodes");
            }
            assert!(
                peak <= bound as u64,
                "{what}: decoding took {peak} bytes, over the bound {bound} ({} body bytes)",
                body.len()
            );
            worst = worst.max(peak);
        }
        eprintln!(
            "{what}: {} body bytes, peak {worst} bytes, bound {bound} ({:.1}x the peak)",
            body.len(),
            bound as f64 / worst.max(1) as f64
        );
        (worst, bound)
    }

    const TRACES: [Option<bool>; 2] = [Some(true), None];
    const LOGS: [Option<bool>; 2] = [None, Some(true)];
    /// A trace request that is refused (any trace body decodes as an empty logs request).
    const REFUSED: [Option<bool>; 2] = [Some(false), None];

    /// A trace request whose one span has the attribute `key` = `value` (an AnyValue's JSON).
    fn trace_with(value: &str, more_attributes: &str) -> String {
        format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"a"}}}}]}},"scopeSpans":[{{"scope":{{"name":"s"}},"spans":[{{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"op","attributes":[{{"key":"k","value":{value}}}{more_attributes}]}}]}}]}}]}}"#
        )
    }

    /// A logs request whose one record has `value` as its body.
    fn log_with(value: &str) -> String {
        format!(
            r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"timeUnixNano":"1","body":{value}}}]}}]}}]}}"#
        )
    }

    /// `leaf` inside `depth` kvlists, each holding `siblings` more members besides.
    fn kvlists(depth: usize, leaf: &str, siblings: &str) -> String {
        let mut v = leaf.to_string();
        for _ in 0..depth {
            v = format!(r#"{{"kvlistValue":{{"values":[{{"key":"k","value":{v}}}{siblings}]}}}}"#);
        }
        v
    }

    /// `leaf` inside `depth` arrays, each holding `siblings` more elements besides.
    fn arrays(depth: usize, leaf: &str, siblings: &str) -> String {
        let mut v = leaf.to_string();
        for _ in 0..depth {
            v = format!(r#"{{"arrayValue":{{"values":[{v}{siblings}]}}}}"#);
        }
        v
    }

    fn repeat(item: &str, n: usize) -> String {
        let mut s = String::with_capacity(n * (item.len() + 1));
        for _ in 0..n {
            s.push(',');
            s.push_str(item);
        }
        s
    }

    /// Found by the `otlp_json` fuzz target: nested `kvlistValue`s and
    /// `{"key":"","value":null}` attributes decoded into 144 001 bytes, over the bound then
    /// reserved, since serde buffers every nested `AnyValue` again (`#[serde(flatten)]`).
    #[test]
    fn regression_json_decoded_size_bound_fuzz_finding_fits() {
        let body = include_bytes!("../../fuzz/findings/json_decoded_size_over_bound.json");
        within_bound("fuzz finding", body, TRACES);
    }

    /// The deepest nesting the limits allow, with wide kvlists at every level, escaped strings
    /// (buffered as copies at every level) and many empty members at the bottom.
    #[test]
    fn regression_json_decoded_size_bound_holds_for_deep_and_wide_anyvalues() {
        let wide = repeat(r#"{"key":"","value":null}"#, 40);
        let escaped = format!(r#"{{"stringValue":"{}"}}"#, r"\u0041\n".repeat(200));
        let empty = repeat("{}", 2000);
        let nulls = repeat("null", 4000);
        let members = repeat(r#"{"key":""}"#, 2000);
        let mut cases: Vec<(String, String, [Option<bool>; 2])> = Vec::new();
        // serde_json's nesting limit of 128 allows 29 kvlists (4 levels each) in a span.
        for depth in [1, 8, 29] {
            cases.push((
                format!("{depth} kvlists with 40 null members each"),
                trace_with(&kvlists(depth, r#"{"stringValue":"x"}"#, &wide), ""),
                TRACES,
            ));
            cases.push((
                format!("{depth} kvlists around an escaped string"),
                trace_with(&kvlists(depth, &escaped, ""), ""),
                TRACES,
            ));
            cases.push((
                format!("{depth} kvlists around 2000 empty members"),
                trace_with(
                    &kvlists(
                        depth.min(28),
                        &format!(r#"{{"kvlistValue":{{"values":[{{"key":""}}{members}]}}}}"#),
                        "",
                    ),
                    "",
                ),
                TRACES,
            ));
        }
        // 39 arrays (3 levels each).
        for depth in [1, 8, 39] {
            cases.push((
                format!("{depth} arrays of 4000 nulls"),
                trace_with(&arrays(depth, "null", &nulls), ""),
                REFUSED,
            ));
            cases.push((
                format!("{depth} arrays of 2000 empty values"),
                trace_with(&arrays(depth, "{}", &empty), ""),
                TRACES,
            ));
            cases.push((
                format!("a log body in {depth} arrays of 2000 empty values"),
                log_with(&arrays(depth, "{}", &empty)),
                LOGS,
            ));
        }
        // Buffered, then refused: an object as an `intValue`, an unknown member.
        cases.push((
            "an intValue holding 2000 members, 20 kvlists deep".into(),
            trace_with(
                &kvlists(
                    20,
                    &format!(r#"{{"intValue":{{"a":1{}}}}}"#, repeat(r#""b":{}"#, 2000)),
                    "",
                ),
                "",
            ),
            REFUSED,
        ));
        cases.push((
            "unknown members holding 2000 arrays, 25 kvlists deep".into(),
            trace_with(
                &kvlists(
                    25,
                    &format!(r#"{{"junk":[[]{}]}}"#, repeat("[[],[]]", 2000)),
                    "",
                ),
                "",
            ),
            TRACES,
        ));
        // An entity's key names, each a `String` in a growing vector.
        cases.push((
            "20000 empty entity key names".into(),
            format!(
                r#"{{"resourceSpans":[{{"resource":{{"entityRefs":[{{"schemaUrl":"","type":"t","idKeys":[""{}],"descriptionKeys":[""{}]}}]}},"scopeSpans":[],"schemaUrl":""}}]}}"#,
                repeat(r#""""#, 20000),
                repeat(r#""""#, 20000)
            ),
            TRACES,
        ));
        // Many empty attributes and values, and bytes.
        cases.push((
            "20000 attributes without values".into(),
            trace_with("{}", &repeat(r#"{"key":""}"#, 20000)),
            TRACES,
        ));
        cases.push((
            "20000 empty values".into(),
            trace_with("{}", &repeat(r#"{"key":"","value":{}}"#, 20000)),
            TRACES,
        ));
        cases.push((
            "a bytes value 20 arrays deep".into(),
            trace_with(
                &arrays(
                    20,
                    &format!(r#"{{"bytesValue":"{}"}}"#, "QUJD".repeat(1000)),
                    "",
                ),
                "",
            ),
            TRACES,
        ));
        for (what, body, decodes) in cases {
            within_bound(&what, body.as_bytes(), decodes);
        }
    }

    /// A request of the usual shape is not charged far beyond what it takes.
    #[test]
    fn the_bound_of_a_flat_request_stays_near_its_peak() {
        let attributes = repeat(
            r#"{"key":"http.request.method","value":{"stringValue":"GET"}}"#,
            30,
        );
        let span = format!(
            r#"{{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"op","startTimeUnixNano":"1","endTimeUnixNano":"2","attributes":[{{"key":"a","value":{{"intValue":"1"}}}}{attributes}]}}"#
        );
        let spans = format!("{span}{}", repeat(&span, 199));
        let body = format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[]}},"scopeSpans":[{{"spans":[{spans}]}}]}}]}}"#
        );
        let (peak, bound) = within_bound("200 spans of 31 attributes", body.as_bytes(), TRACES);
        assert!(bound as u64 <= 16 * peak, "bound {bound}, peak {peak}");
    }

    /// Deeper than protobuf decoding allows, or than `serde_json` follows: refused with the
    /// limit named, before anything is reserved.
    #[test]
    fn bodies_nested_deeper_than_the_limits_are_refused_naming_them() {
        // The request object and 100 levels below it.
        let objects = format!("{}{{}}{}", r#"{"a":"#.repeat(100), "}".repeat(100));
        assert!(json_decoded_size(objects.as_bytes()).is_ok());
        let objects = format!("{}{{}}{}", r#"{"a":"#.repeat(101), "}".repeat(101));
        let e = json_decoded_size(objects.as_bytes()).unwrap_err();
        assert!(e.0.contains("more than 100 levels"), "{}", e.0);
        // As deep as `serde_json` decodes, and deeper.
        let arrays = |n: usize| format!(r#"{{"a":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        assert!(json_decoded_size(arrays(127).as_bytes()).is_ok());
        let e = json_decoded_size(arrays(128).as_bytes()).unwrap_err();
        assert!(e.0.contains("more than 128 levels"), "{}", e.0);
    }
}
