#!/usr/bin/env bash
# The guard against slowdowns: instructions per no-op job (enqueue + processing, embedded
# backend) and per HTTP single-job enqueue, counted by valgrind's callgrind on a fixed small
# workload of the release build, compared with the baseline committed in
# scripts/perf-baseline.txt. Instructions, not seconds: they do not move with the machine's load
# (two runs agree within about 0.3%).
#
#   scripts/perf-guard.sh            # build, count, compare; exit 1 if either is > 10% worse
#   scripts/perf-guard.sh --update   # build, count, write the counts as the new baseline
#
# Each figure is the difference of two runs (N and 2N jobs, or requests) divided by N, so the
# start-up and shutdown of the process cancel out. CONVEYOR_GUARD_BIN=path counts that binary
# instead of building one (how the negative control was run). Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
baseline=scripts/perf-baseline.txt
limit_pct=10
update=0
if [ "${1:-}" = "--update" ]; then update=1; shift; fi

if ! command -v valgrind >/dev/null; then
  echo "perf-guard: valgrind is missing: apt-get install valgrind" >&2
  exit 1
fi
bin=${CONVEYOR_GUARD_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release -p conveyor "$@" >&2
  bin=target/release/conveyor
fi
work=$(mktemp -d -t conveyor-guard.XXXXXX)
trap 'rm -rf "$work"' EXIT

# instructions of one run of `conveyor bench` with these arguments
count() {
  local name=$1; shift
  if ! valgrind --tool=callgrind --callgrind-out-file="$work/$name.out" \
      "$bin" bench --latency-jobs 0 --delayed-jobs 0 --request-jobs 0 "$@" \
      >"$work/$name.log" 2>&1; then
    echo "perf-guard: \`conveyor bench $*\` failed under valgrind:" >&2
    tail -n 20 "$work/$name.log" >&2
    exit 1
  fi
  sed -n 's/^summary: \([0-9]*\).*/\1/p' "$work/$name.out"
}

jobs=6000
requests=2000
echo "perf-guard: counting instructions with callgrind ($bin)" >&2
j1=$(count jobs1 --jobs $jobs)
j2=$(count jobs2 --jobs $((2 * jobs)))
h1=$(count http1 --jobs 0 --http-jobs $requests)
h2=$(count http2 --jobs 0 --http-jobs $((2 * requests)))
per_job=$(( (j2 - j1) / jobs ))
per_request=$(( (h2 - h1) / requests ))
echo "perf-guard: noop_job=$per_job instructions per no-op job (enqueue + processing)" >&2
echo "perf-guard: http_enqueue=$per_request instructions per HTTP single-job enqueue (server and client)" >&2

if [ "$update" = 1 ]; then
  {
    echo "# Instructions per unit of work, counted by scripts/perf-guard.sh (callgrind, release"
    echo "# build); CI fails when a change makes either more than ${limit_pct}% worse. Updated with"
    echo "# scripts/perf-guard.sh --update, on purpose, in the commit that explains why."
    echo "noop_job=$per_job"
    echo "http_enqueue=$per_request"
  } >"$baseline"
  echo "perf-guard: wrote $baseline" >&2
  exit 0
fi

if [ ! -f "$baseline" ]; then
  echo "perf-guard: no $baseline: run scripts/perf-guard.sh --update and commit it" >&2
  exit 1
fi
failed=0
check() {
  local name=$1 now=$2 base
  base=$(sed -n "s/^$name=\([0-9]*\)$/\1/p" "$baseline")
  if [ -z "$base" ]; then
    echo "perf-guard: $baseline has no $name=: run scripts/perf-guard.sh --update" >&2
    failed=1
    return
  fi
  local pct=$(( (now - base) * 1000 / base )) sign=+
  if [ "$pct" -lt 0 ]; then sign=-; pct=$(( -pct )); fi
  local shown="$sign$((pct / 10)).$((pct % 10))%"
  if [ $((now * 100)) -gt $((base * (100 + limit_pct))) ]; then
    echo "perf-guard: FAIL $name: $now instructions, baseline $base ($shown, more than ${limit_pct}% worse)" >&2
    failed=1
  else
    echo "perf-guard: ok   $name: $now instructions, baseline $base ($shown)" >&2
    if [ $((now * 100)) -lt $((base * (100 - limit_pct))) ]; then
      echo "perf-guard:      more than ${limit_pct}% better: lock it in with scripts/perf-guard.sh --update" >&2
    fi
  fi
}
check noop_job "$per_job"
check http_enqueue "$per_request"
if [ "$failed" = 1 ]; then
  cat >&2 <<EOF
perf-guard: a change made conveyor slower. Find where with
  valgrind --tool=callgrind $bin bench --jobs $jobs --latency-jobs 0 --delayed-jobs 0 --request-jobs 0
  callgrind_annotate --inclusive=yes callgrind.out.<pid>
and compare with the same run of main. If the cost is intended (it buys a guarantee), say so in
the commit and run scripts/perf-guard.sh --update to make the new counts the baseline.
EOF
  exit 1
fi
