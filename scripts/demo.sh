#!/usr/bin/env bash
# One command, no external servers: builds dlog and the demo services, starts the all-in-one
# process (OTLP receiver + indexing + alerting + embedded store under ./dlog-demo-data), starts
# services A -> B -> C with failure injection on C, drives load through them with the test
# client, then shows what the system made of it: the newest traces, one trace as a tree,
# service status, dependencies and alerts. It then makes service C go silent (kill -9) so that
# the heartbeat rule fires, and leaves everything running until Ctrl-C.
#
# Flags: --once (stop after the report instead of waiting), --requests N (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."

once=false
requests=60
while [ $# -gt 0 ]; do
  case "$1" in
    --once) once=true ;;
    --requests) requests="$2"; shift ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME}/.cache/dlog/target}"
echo "==> building (release)"
cargo build --release --quiet -p dlog -p dlog-services
bin="${CARGO_TARGET_DIR}/release"
# The demo's own data directory, emptied at every start so each run tells its own story
# (the default ./dlog-data of `dlog up` is left alone).
data="./dlog-demo-data"
logs="${data}/logs"
rm -rf "${data}"
mkdir -p "${logs}"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_port() {
  for _ in $(seq 1 100); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1; see ${logs}" >&2
  return 1
}

echo "==> dlog up (data in ${data}; alerts print here)"
"${bin}/dlog" --data-dir "${data}" up &
pids+=($!)
wait_port 4317

echo "==> services A, B, C (C: 20% errors, 20% slow responses); logs in ${logs}"
"${bin}/service-c" --heartbeat-secs 2 --error-rate 0.2 --slow-rate 0.2 --slow-ms 700 2>"${logs}/service-c.log" &
pid_c=$!; pids+=($pid_c)
"${bin}/service-b" --heartbeat-secs 2 2>"${logs}/service-b.log" &
pids+=($!)
"${bin}/service-a" --heartbeat-secs 2 2>"${logs}/service-a.log" &
pids+=($!)
wait_port 5000; wait_port 5001; wait_port 5002

echo "==> test client: ${requests} requests through A"
"${bin}/test-client" --requests "${requests}" --rate 20 2>"${logs}/test-client.log"

q() { "${bin}/dlog" --data-dir "${data}" "$@"; }
echo; echo "==> newest traces";          q traces --limit 5
# The newest trace that reached service C: the services export in batches, so the very newest
# requests may still be on their way, and a trace through all three services shows the tree.
trace=$(q traces --service service-c --limit 1 | awk 'NR==1 {print $1}')
if [ -n "${trace}" ]; then
  echo; echo "==> dlog trace ${trace}"; q trace "${trace}"
fi
echo; echo "==> dlog status";            q status
echo; echo "==> dlog deps";              q deps
echo; echo "==> dlog logs --level ERROR --limit 5"; q logs --level ERROR --limit 5
echo; echo "==> dlog alerts";            q alerts --limit 10
echo
echo "==> the viewer: open http://127.0.0.1:16686/search (traces, logs, service map, alerts;"
echo "    Grafana's Jaeger data source can use http://127.0.0.1:16686 as its URL)"

echo; echo "==> kill -9 service-c: its heartbeats stop; 'delayed' fires after 2 intervals (4 s), 'down' after 3"
kill -9 "${pid_c}" 2>/dev/null || true
if ${once}; then
  for _ in $(seq 1 80); do
    q alerts --state firing | grep -q heartbeat_down && break
    sleep 0.25
  done
  q alerts --limit 10
  exit 0
fi
echo "Everything keeps running; query with: ${bin}/dlog --data-dir ${data} traces|trace ID|logs|status|deps|alerts"
echo "Ctrl-C stops it all."
wait "${pids[0]}"
