#!/bin/sh
# abi-check.sh BASELINE.abi LIBRARY.so HEADERS-DIR
#
# Compares a built library with an ABI baseline made by abidw, through
# libabigail's abidiff, restricted to the types of the public headers.
# Passes when the only differences are added functions (a minor release
# may add calls; they are listed); fails on anything else: a removed
# function or variable (abidiff's "incompatible" bit), a changed prototype
# or a changed public type (its "ABI change" bit with additions filtered
# out), or an abidiff error.  Exit 0: compatible; 1: not; 2: cannot check.
set -u
ABIDIFF=${ABIDIFF:-abidiff}
[ $# -eq 3 ] || { echo "usage: $0 BASELINE.abi LIBRARY.so HEADERS-DIR" >&2; exit 2; }
base=$1 lib=$2 hdrs=$3
[ -f "$base" ] || { echo "abi-check: no baseline '$base' (make store-abi makes one)" >&2; exit 2; }
[ -f "$lib" ] || { echo "abi-check: no library '$lib'" >&2; exit 2; }

"$ABIDIFF" --headers-dir2 "$hdrs" "$base" "$lib"
rc=$?
if [ $((rc & 3)) -ne 0 ]; then
  echo "abi-check: abidiff could not compare (exit $rc)" >&2
  exit 2
fi
if [ $((rc & 8)) -ne 0 ]; then
  echo "abi-check: FAIL: incompatible change (a function or variable of the baseline is gone)"
  exit 1
fi
if [ $((rc & 4)) -ne 0 ]; then
  "$ABIDIFF" --no-added-syms --headers-dir2 "$hdrs" "$base" "$lib" >/dev/null
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "abi-check: FAIL: a function or public type of the baseline changed (abidiff exit $rc)"
    exit 1
  fi
  echo "abi-check: compatible: functions were added (store them with make store-abi in the release that adds them)"
  exit 0
fi
echo "abi-check: compatible: no change"
exit 0
