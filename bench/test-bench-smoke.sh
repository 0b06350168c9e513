#!/bin/sh
# Smoke run of the benchmark (make check): every case with tiny sizes and
# one repetition.  Fails if the program fails (a libaddcow call failed, or
# data read back differs from the raw file) or writes no CSV/SVG.  Missed
# performance targets do not fail it: tiny sizes say nothing about speed.
set -u
out=$(mktemp -d "${TMPDIR:-/tmp}/bench-smoke.XXXXXX") || exit 99
trap 'rm -rf "$out"' EXIT
# A sanitizer build (bench/Makefile sets BENCH_SANITIZED) runs every case
# but 9, whose children cap their address space below what ASan and TSan
# reserve.
cases=
if [ -n "${BENCH_SANITIZED:-}" ]; then
    cases="--cases 1,2,3,4,5,6,7,8,10,P"
    echo "sanitizer build: case 9 (address space capped with RLIMIT_AS) left out"
fi
# shellcheck disable=SC2086
./addcow-bench --smoke $cases --csv "$out/smoke.csv" --svg "$out/smoke.svg" || {
    echo "FAIL: addcow-bench --smoke exited with $?"; exit 1; }
test -s "$out/smoke.csv" || { echo "FAIL: no CSV written"; exit 1; }
grep -q '^"1",' "$out/smoke.csv" || { echo "FAIL: CSV has no case 1 row"; exit 1; }
if grep -q '"FAIL"' "$out/smoke.csv"; then echo "FAIL: a case read wrong data"; exit 1; fi
grep -q '</svg>' "$out/smoke.svg" || { echo "FAIL: SVG incomplete"; exit 1; }
echo "smoke: ok"
