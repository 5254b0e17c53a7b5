#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ for a bounded time and prints the executions of each.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#
# With FUZZ_RUNS=N set, each target stops after N executions or the given seconds, whichever
# comes first (a long offline run: FUZZ_RUNS=10000000 scripts/fuzz.sh 36000 wal_frame).
#
# Builds the targets with cargo-fuzz (libFuzzer; no sanitizer, since the workspace forbids
# unsafe code; debug assertions and overflow checks on), then runs each one from the seed
# corpus in fuzz/corpus/<target>/ plus a working corpus outside the repository, which grows
# from run to run. Exits non-zero when a target crashes, panics, times out or exceeds its
# memory limit; the input that did it is kept under the work directory's artifacts/ and named
# in the output.
#
# Environment: FUZZ_WORK_DIR (working corpus and crash artifacts, default
# ~/.cache/dlog/fuzz), FUZZ_TARGET_DIR (build directory, default
# ~/.cache/dlog/fuzz-target), FUZZ_RUNS (executions per target, default unbounded).
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); the stable toolchain works with
# RUSTC_BOOTSTRAP=1, which this script sets for the build.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
all_targets=(wire_raw wire_structured otlp_json stage_records wal_frame)
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=("${all_targets[@]}")
fi
work="${FUZZ_WORK_DIR:-${HOME}/.cache/dlog/fuzz}"
target_dir="${FUZZ_TARGET_DIR:-${HOME}/.cache/dlog/fuzz-target}"

echo "==> building fuzz targets (cargo fuzz build -s none -a)"
build_start=$(date +%s)
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -s none -a --target-dir "$target_dir")
echo "    built in $(( $(date +%s) - build_start ))s"

triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$target_dir/$triple/release"
failed=()
runs_limit="${FUZZ_RUNS:--1}"
# CPU seconds (user + system) of the finished children of this shell, in hundredths: on a
# shared machine executions per CPU second say more than per wall second. `times` runs in
# this shell (in a command substitution it would see the subshell's children only).
cpu_times="$(mktemp)"
trap 'rm -f "$cpu_times"' EXIT
children_cpu() {
    awk 'END { s = 0; for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] }
               printf "%d", s * 100 }' "$cpu_times"
}
row='%-18s %14s %10s %8s %12s %8s'
summary=("$(printf "$row" target executions exec/s seconds exec/cpu-s result)")
for target in "${targets[@]}"; do
    corpus="$work/corpus/$target"
    artifacts="$work/artifacts/$target/"
    mkdir -p "$corpus" "$artifacts"
    log="$work/$target.log"
    # The largest input libFuzzer makes. The structure-aware inputs expand (an entry repeated
    # 64 times, thousands of entity key names, groups) up to the body limit of
    # fuzz/src/lib.rs (MAX_BODY), so a few KB of input reach it; a JSON body that nests past
    # every limit of the receiver takes under 2 KB.
    max_len=65536
    extra=()
    case "$target" in
        wire_structured) max_len=8192 ;;
        otlp_json)
            max_len=16384
            extra+=("-dict=fuzz/dict/otlp_json.dict")
            ;;
    esac
    echo "==> $target for ${seconds}s"
    start=$(date +%s)
    times > "$cpu_times"
    cpu_start=$(children_cpu)
    set +e
    "$bin_dir/$target" "$corpus" "fuzz/corpus/$target" \
        -max_total_time="$seconds" -runs="$runs_limit" -timeout=20 -rss_limit_mb=2048 \
        -max_len="$max_len" -print_final_stats=1 -artifact_prefix="$artifacts" \
        "${extra[@]}" > "$log" 2>&1
    status=$?
    set -e
    elapsed=$(( $(date +%s) - start ))
    times > "$cpu_times"
    cpu=$(( $(children_cpu) - cpu_start ))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | awk '{s+=$1} END {print s+0}')
    rate=$(( runs / (elapsed > 0 ? elapsed : 1) ))
    cpu_rate=$(( runs * 100 / (cpu > 0 ? cpu : 1) ))
    if [ "$status" -eq 0 ]; then
        result=ok
    else
        result=FAILED
        failed+=("$target")
        echo "---- $target failed (exit $status); last lines of $log:"
        tail -40 "$log"
        ls -1 "$artifacts" | sed "s|^|    artifact: $artifacts|"
    fi
    summary+=("$(printf "$row" "$target" "$runs" "$rate" "$elapsed" "$cpu_rate" "$result")")
done
echo "==> executions per target (at most ${seconds}s each)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found failures in: ${failed[*]}" >&2
    exit 1
fi
