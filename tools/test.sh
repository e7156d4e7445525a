#!/usr/bin/env bash
# `make test`: every tier. Most of a lab test's time is spent waiting (a throttled link, a timeout, a
# guest booting), not computing, so on a machine that can run the lab two pytest runs go at once,
# each on a lab of its own: the fault suite and the other long lab scenarios (SECOND) on lab 1
# (VEMIGRATE_LAB_INSTANCE=1, docs/lab.md), everything else on the default lab. The second run's
# output follows the first's; the exit status is the first failure's.
# VEMIGRATE_TEST_SPLIT=0, or any pytest arguments: one run, as plain `pytest`. VEMIGRATE_TEST_SECOND_LAB=N:
# the second run on lab N instead of 1 (another run holds lab 1).
set -uo pipefail
cd "$(dirname "$0")/.."

SECOND=(tests/faults tests/lab/test_operator_completion.py tests/lab/test_argocd_health_live.py tests/lab/test_argocd_real.py tests/lab/test_large_offline.py)

if [ "${VEMIGRATE_TEST_SPLIT:-1}" = 0 ] || [ "$#" -gt 0 ]; then
    exec pytest "$@"
fi

log=$(mktemp -t vemigrate-test-second.XXXXXX.log)
lab=${VEMIGRATE_TEST_SECOND_LAB:-1}
VEMIGRATE_LAB_INSTANCE=$lab pytest "${SECOND[@]}" >"$log" 2>&1 &
second=$!
trap 'kill "$second" 2>/dev/null' INT TERM

ignore=()
for path in "${SECOND[@]}"; do ignore+=("--ignore=$path"); done
echo "[test] ${SECOND[*]} run at the same time on lab $lab; their output follows this run's ($log)"
pytest "${ignore[@]}"
first_rc=$?
wait "$second"
second_rc=$?
echo
echo "================ the second run (VEMIGRATE_LAB_INSTANCE=$lab): ${SECOND[*]} ================"
cat "$log"

# 5 is pytest's "no tests collected": a tier with nothing to run here is not a failure.
status=0
for rc in "$first_rc" "$second_rc"; do
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ] && [ "$status" -eq 0 ]; then status=$rc; fi
done
echo "[test] first run exit $first_rc, second run exit $second_rc"
exit "$status"
