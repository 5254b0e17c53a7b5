#!/usr/bin/env bash
# One command, no external servers: builds dlog and the demo services, starts the all-in-one
# process (OTLP receiver + indexing + alerting + embedded store under ./dlog-demo-data), starts
# the larger demo topology (service-a calling service-b, a simulated database, service-c, whose
# load wanders, and auth, inventory and payment, which call cache and notification), drives
# load through them with the test client (its table per service and endpoint), then shows
# what the system made of it: the newest traces, one trace as a tree, service status,
# dependencies (with the undeclared call and the unused declaration) and alerts. It then
# makes service-c go silent (kill -9) so that the heartbeat rule fires, and leaves everything
# running until Ctrl-C.
#
# Flags: --once (stop after the report instead of waiting), --requests N (default 100),
# --rate R (requests per second, default 20), --small (services A, B and C only).
set -euo pipefail
cd "$(dirname "$0")/.."

once=false
requests=100
rate=20
topology=large
while [ $# -gt 0 ]; do
  case "$1" in
    --once) once=true ;;
    --requests) requests="$2"; shift ;;
    --rate) rate="$2"; shift ;;
    --small) topology=small ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME}/.cache/dlog/target}"
# DLOG_DEMO_PROFILE=debug runs a debug build instead (quicker to build, slower to run).
profile="${DLOG_DEMO_PROFILE:-release}"
echo "==> building (${profile})"
if [ "${profile}" = release ]; then
  cargo build --release --quiet -p dlog -p dlog-services
else
  cargo build --quiet -p dlog -p dlog-services
fi
bin="${CARGO_TARGET_DIR}/${profile}"
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

echo "==> ${topology} topology; service logs in ${logs}"
# Behaviour is the services' own (B fails 20%, C's load wanders); change it while it runs:
#   curl -s -XPOST 127.0.0.1:5001/chaos -d '{"error_rate": 0.6}'
"${bin}/service-c" --heartbeat-secs 2 2>"${logs}/service-c.log" &
pid_c=$!; pids+=($pid_c)
"${bin}/service-b" --heartbeat-secs 2 2>"${logs}/service-b.log" &
pids+=($!)
ports=(5000 5001 5002)
if [ "${topology}" = large ]; then
  port=5003
  for role in inventory payment notification auth cache; do
    "${bin}/demo-service" --role "${role}" --heartbeat-secs 2 2>"${logs}/${role}.log" &
    pids+=($!); ports+=(${port}); port=$((port + 1))
  done
fi
"${bin}/service-a" --topology "${topology}" --heartbeat-secs 2 2>"${logs}/service-a.log" &
pids+=($!)
for port in "${ports[@]}"; do wait_port "${port}"; done

echo "==> test client: ${requests} requests at ${rate}/s"
"${bin}/test-client" --topology "${topology}" --requests "${requests}" --rate "${rate}" \
  2>"${logs}/test-client.log" | tee "${logs}/test-client.table" \
  || { echo "the test client could not run; see ${logs}/test-client.log" >&2; exit 1; }

q() { "${bin}/dlog" --data-dir "${data}" "$@"; }
echo; echo "==> newest traces";          q traces --limit 5
# The slowest request's trace, once all its spans arrived (the services export in batches).
trace=$(awk '/^slowest requests:/ {found=1; next} found && /trace/ {id = $NF; sub(/.*\//, "", id); print id; exit}' "${logs}/test-client.table")
if [ -n "${trace}" ]; then
  for _ in $(seq 1 40); do
    q trace "${trace}" 2>/dev/null | grep orphan >/dev/null || break
    sleep 0.25
  done
  echo; echo "==> dlog trace ${trace} (the slowest request)"; q trace "${trace}"
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
    q alerts --state firing | grep heartbeat_down >/dev/null && break
    sleep 0.25
  done
  q alerts --limit 10
  exit 0
fi
echo "Everything keeps running; query with: ${bin}/dlog --data-dir ${data} traces|trace ID|logs|status|deps|alerts"
echo "Ctrl-C stops it all."
wait "${pids[0]}"
