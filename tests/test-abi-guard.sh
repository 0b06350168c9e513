#!/bin/sh
# The ABI guard itself (lib/abi-check.sh, behind make check-abi), shown able
# to fail: on three tiny libraries against a baseline of a fourth,
#   - a changed prototype and a grown public struct must fail,
#   - a removed function must fail,
#   - an added function alone must pass;
# then the built libaddcow against lib/libaddcow.abi must pass.
# Skipped (77) without libabigail (abigail-tools).
set -u
: "${top_srcdir:=..}" "${top_builddir:=..}" "${CC:=cc}"
ABIDW=${ABIDW:-$(command -v abidw || true)}
ABIDIFF=${ABIDIFF:-$(command -v abidiff || true)}
[ -n "$ABIDW" ] && [ -n "$ABIDIFF" ] || { echo "SKIP: abidw/abidiff not installed"; exit 77; }
export ABIDIFF
check=$top_srcdir/lib/abi-check.sh
dir=$(mktemp -d "${TMPDIR:-/tmp}/addcow-abi.XXXXXX")
trap 'rm -rf "$dir"' EXIT
fails=0

mk() {  # mk NAME 'header text' 'source text'
  mkdir -p "$dir/$1"
  printf '%s\n' "$2" > "$dir/$1/t.h"
  printf '#include "t.h"\n%s\n' "$3" > "$dir/$1/t.c"
  $CC -g -O0 -shared -fPIC -I"$dir/$1" -o "$dir/$1/libt.so" "$dir/$1/t.c" ||
    { echo "cannot build the $1 library"; exit 1; }
}
expect() {  # expect WANT NAME
  out=$(sh "$check" "$dir/base.abi" "$dir/$2/libt.so" "$dir/$2" 2>&1); rc=$?
  if [ "$rc" -ne "$1" ]; then
    echo "FAIL: $2: abi-check exit $rc, expected $1"; echo "$out" | sed 's/^/    /'
    fails=$((fails + 1))
  else
    echo "ok: $2: exit $rc ($(echo "$out" | tail -1))"
  fi
}

mk base 'struct t_info { int a; }; int t_f(int a); int t_g(struct t_info *p); int t_h(void);' \
  'int t_f(int a) { return a; } int t_g(struct t_info *p) { return p->a; } int t_h(void) { return 0; }'
"$ABIDW" --no-corpus-path --headers-dir "$dir/base" "$dir/base/libt.so" > "$dir/base.abi" ||
  { echo "abidw failed"; exit 1; }
mk changed 'struct t_info { int a; long b; }; int t_f(int a, long b); int t_g(struct t_info *p); int t_h(void);' \
  'int t_f(int a, long b) { return a + (int)b; } int t_g(struct t_info *p) { return p->a; } int t_h(void) { return 0; }'
mk removed 'struct t_info { int a; }; int t_f(int a); int t_g(struct t_info *p);' \
  'int t_f(int a) { return a; } int t_g(struct t_info *p) { return p->a; }'
mk added 'struct t_info { int a; }; int t_f(int a); int t_g(struct t_info *p); int t_h(void); int t_new(void);' \
  'int t_f(int a) { return a; } int t_g(struct t_info *p) { return p->a; } int t_h(void) { return 0; } int t_new(void) { return 1; }'
expect 1 changed
expect 1 removed
expect 0 added

so=$top_builddir/lib/.libs/libaddcow.so.1
if [ -f "$so" ]; then
  out=$(sh "$check" "$top_srcdir/lib/libaddcow.abi" "$so" "$top_srcdir/include" 2>&1); rc=$?
  if [ $rc -ne 0 ]; then
    echo "FAIL: libaddcow against lib/libaddcow.abi: exit $rc"; echo "$out" | sed 's/^/    /'
    fails=$((fails + 1))
  else
    echo "ok: libaddcow against lib/libaddcow.abi ($(echo "$out" | tail -1))"
  fi
fi
[ $fails -eq 0 ]
