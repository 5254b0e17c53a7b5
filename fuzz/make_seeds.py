#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/): a few small, valid
OTLP export requests (protobuf and JSON), local-log frames, and edge cases. Run from anywhere;
the output is deterministic, so re-running changes nothing."""
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def ld(tag, body):
    if isinstance(body, str):
        body = body.encode()
    return varint(tag << 3 | 2) + varint(len(body)) + body


def vi(tag, v):
    return varint(tag << 3) + varint(v)


def f64(tag, v):
    return varint(tag << 3 | 1) + struct.pack("<Q", v)


def any_str(s):
    return ld(1, s)


def kv(key, value):
    return ld(1, key) + ld(2, value)


SERVICE = [kv("service.name", any_str("checkout")), kv("service.instance.id", any_str("checkout-1"))]
RESOURCE = b"".join(ld(1, a) for a in SERVICE)
SCOPE = ld(1, "dlog") + ld(2, "0.1.0")


def span(trace, span_id, name, parent=None, error=False):
    out = ld(1, bytes([trace]) * 16) + ld(2, bytes([span_id]) * 8)
    if parent is not None:
        out += ld(4, bytes([parent]) * 8)
    out += ld(5, name) + vi(6, 2) + f64(7, 1_700_000_000_000_000_000) + f64(8, 1_700_000_000_500_000_000)
    out += ld(9, kv("http.request.method", any_str("GET")))
    out += ld(9, kv("db.password", any_str("hunter2")))
    out += ld(9, kv("peer.service", any_str("payments")))
    # A nested value: an array holding a kvlist.
    nested = ld(5, ld(1, ld(6, ld(1, kv("k", vi(3, 7))))))
    out += ld(9, kv("nested", nested))
    out += ld(11, f64(1, 1_700_000_000_100_000_000) + ld(2, "exception") + ld(3, kv("exception.message", any_str("boom"))))
    out += ld(13, ld(1, bytes([9]) * 16) + ld(2, bytes([8]) * 8))
    if error:
        out += ld(15, ld(2, "failed") + vi(3, 2))
    return out


def traces(spans):
    return ld(1, ld(1, RESOURCE) + ld(2, ld(1, SCOPE) + b"".join(ld(2, s) for s in spans)) + ld(3, "https://opentelemetry.io/schemas/1.26.0"))


def log(body, trace=None, event=None, attrs=()):
    out = f64(1, 1_700_000_000_000_000_000) + vi(2, 17) + ld(3, "ERROR") + ld(5, any_str(body))
    for k, v in attrs:
        out += ld(6, kv(k, v))
    if trace is not None:
        out += ld(9, bytes([trace]) * 16) + ld(10, bytes([trace]) * 8)
    if event is not None:
        out += ld(12, event)
    return out


def logs(records):
    return ld(1, ld(1, RESOURCE) + ld(2, ld(1, SCOPE) + b"".join(ld(2, r) for r in records)))


PROTO_TRACES = {
    "one_span": traces([span(1, 1, "GET /")]),
    "one_trace": traces([span(2, 1, "GET /cart"), span(2, 2, "SELECT", parent=1, error=True)]),
    "many_traces": traces([span(t, 1, "op") for t in range(3, 12)]),
    "empty": b"",
    "repeated_resource": ld(1, ld(1, RESOURCE) + ld(1, RESOURCE) + ld(2, ld(2, span(1, 1, "x")))),
    "groups": traces([span(1, 1, "g") + bytes([0x7B, 0x73, 0x08, 0x00, 0x74, 0x7C])]),
}
PROTO_LOGS = {
    "log_with_trace": logs([log("payment failed", trace=5)]),
    "heartbeat": logs([
        log("", event="service.registration", attrs=[("service.status", any_str("UP"))]),
        log("", event="service.heartbeat", attrs=[("service.heartbeat.interval_ms", vi(3, 10000))]),
    ]),
    "service_call": logs([log("call", trace=6, event="log_service_call", attrs=[("duration_ms", vi(3, 12))])]),
}

ATTRS = [
    {"key": "http.request.method", "value": {"stringValue": "GET"}},
    {"key": "http.request.header.authorization", "value": {"stringValue": "Bearer x"}},
    {"key": "retries", "value": {"intValue": "3"}},
    {"key": "ratio", "value": {"doubleValue": 0.5}},
    {"key": "ok", "value": {"boolValue": True}},
    {"key": "raw", "value": {"bytesValue": "AAEC"}},
    {"key": "list", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": 1}}]}}]}}},
]
JSON_RESOURCE = {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}, {"key": "service.instance.id", "value": {"stringValue": "checkout-1"}}]}
JSON_TRACES = {
    "resourceSpans": [{
        "resource": JSON_RESOURCE,
        "scopeSpans": [{
            "scope": {"name": "dlog", "version": "0.1.0"},
            "spans": [{
                "traceId": "5b8efff798038103d269b633813fc60c",
                "spanId": "eee19b7ec3c1b174",
                "parentSpanId": "eee19b7ec3c1b173",
                "name": "GET /",
                "kind": 2,
                "startTimeUnixNano": "1544712660000000000",
                "endTimeUnixNano": "1544712661000000000",
                "attributes": ATTRS,
                "events": [{"timeUnixNano": "1544712660500000000", "name": "ev", "attributes": ATTRS[:1]}],
                "links": [{"traceId": "5b8efff798038103d269b633813fc60d", "spanId": "eee19b7ec3c1b175"}],
                "status": {"code": 2, "message": "failed"},
            }],
        }],
    }],
}
JSON_LOGS = {
    "resourceLogs": [{
        "resource": JSON_RESOURCE,
        "scopeLogs": [{
            "scope": {"name": "dlog"},
            "logRecords": [
                {"timeUnixNano": "1544712660300000000", "observedTimeUnixNano": "1544712660300000000", "severityNumber": 17, "severityText": "ERROR",
                 "body": {"stringValue": "payment failed"}, "attributes": ATTRS, "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174"},
                {"timeUnixNano": "1544712660300000000", "eventName": "service.heartbeat", "body": {"kvlistValue": {"values": []}},
                 "attributes": [{"key": "service.heartbeat.interval_ms", "value": {"intValue": "10000"}}]},
            ],
        }],
    }],
}


def frame(topic, key, headers, value, ts):
    payload = bytes([1]) + struct.pack("<q", ts) + struct.pack("<H", len(topic)) + topic.encode()
    payload += struct.pack("<I", 0xFFFFFFFF if key is None else len(key)) + (key or b"")
    payload += struct.pack("<H", len(headers))
    for name, v in headers:
        payload += struct.pack("<H", len(name)) + name.encode() + struct.pack("<I", len(v)) + v
    payload += value
    return struct.pack("<I", len(payload)) + struct.pack("<I", zlib.crc32(payload)) + payload, payload


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    for name, body in PROTO_TRACES.items():
        write("wire_raw", "traces_" + name, b"\x00" + body)
        write("stage_records", "proto_traces_" + name, b"\x00" + body)
    for name, body in PROTO_LOGS.items():
        write("wire_raw", "logs_" + name, b"\x01" + body)
        write("stage_records", "proto_logs_" + name, b"\x01" + body)
    jt = json.dumps(JSON_TRACES, separators=(",", ":")).encode()
    jl = json.dumps(JSON_LOGS, separators=(",", ":")).encode()
    for target in ("otlp_json",):
        write(target, "traces", b"\x00" + jt)
        write(target, "logs", b"\x00" + jl)
        write(target, "empty_object", b"\x00{}")
        write(target, "empty_entries", b"\x00" + b'{"resourceSpans":[{},{"scopeSpans":[{},{"spans":[{}]}]}]}')
    write("stage_records", "json_traces", b"\x02" + jt)
    write("stage_records", "json_logs", b"\x03" + jl)
    whole, payload = frame("trace_logs", b"0af7651916cd43dd8448eb211c80319c",
                           [("otlp.encoding", b"otlp_proto"), ("otlp.signal", b"traces")],
                           PROTO_TRACES["one_span"], 1_700_000_000_123)
    write("wal_frame", "frame", b"\x00" + whole)
    write("wal_frame", "payload", b"\x01" + payload)
    nokey, nokey_payload = frame("service_logs", None, [], b"", -(2**63))
    write("wal_frame", "frame_no_key", b"\x00" + nokey)
    write("wal_frame", "payload_no_key", b"\x01" + nokey_payload)
    # The structure-aware target reads `arbitrary` input: any bytes make some request.
    for i, seed in enumerate([b"\x00" * 64, bytes(range(256)), b"\x01\x03" * 200]):
        write("wire_structured", "seed%d" % i, seed)
    write("otlp_json", "structured", b"\x01" + bytes(range(256)))


if __name__ == "__main__":
    main()
