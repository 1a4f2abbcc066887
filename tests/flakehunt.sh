#!/usr/bin/env bash
# The flake hunt (README "Tests"): run a pytest selection N times while the machine is
# kept busy on purpose by CPU burners this script starts (and ends, by their PIDs).
#   tests/flakehunt.sh [RUNS] [BURNERS] [pytest args...]   (default: 5 runs, 2 burners, tests/unit)
# Prints one line per run and the counts; exits 1 when any run failed. Each run's output is
# kept in $FLAKEHUNT_LOGS (default: a new temporary folder) for a look at what failed.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
burners=${2:-2}
shift 2 2>/dev/null || shift $#
[ $# -gt 0 ] || set -- tests/unit
logs=${FLAKEHUNT_LOGS:-$(mktemp -d /tmp/flakehunt.XXXXXX)}
mkdir -p "$logs"

pids=()
stop_burners() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; }
trap stop_burners EXIT
for _ in $(seq 1 "$burners"); do
    python3 -c 'while True: pass' &
    pids+=($!)
done

passed=0 failed=0
for i in $(seq 1 "$runs"); do
    if .venv/bin/pytest -q -p no:cacheprovider "$@" >"$logs/run-$i.log" 2>&1; then
        passed=$((passed + 1))
        echo "run $i/$runs: passed ($(tail -1 "$logs/run-$i.log"))"
    else
        failed=$((failed + 1))
        echo "run $i/$runs: FAILED ($(tail -1 "$logs/run-$i.log")); see $logs/run-$i.log"
        grep -E '^(FAILED|ERROR) ' "$logs/run-$i.log" | sed 's/^/    /'
    fi
done
echo "flake hunt: $passed passed, $failed failed, of $runs runs of '$*' beside $burners CPU burners (logs: $logs)"
[ "$failed" -eq 0 ]
