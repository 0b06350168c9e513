#!/bin/sh
# The EXAMPLE programs of the manual pages compile: every .EX/.EE block
# that holds a whole program (a main function) is turned back from roff
# into C and compiled against include/addcow.h as C99 with -Wall -Wextra
# -Werror -pedantic (compiled only, not run: they need image files).
# Exits 77 (skipped) without a C compiler.
set -u
: "${srcdir:=.}" "${top_srcdir:=..}" "${CC:=cc}"
LC_ALL=C
export LC_ALL
pages=${MAN3_PAGES:-$(cd "$srcdir" && ls *.3)}

if ! command -v "${CC%% *}" >/dev/null 2>&1; then
  echo "# no C compiler ($CC): examples not compiled"
  exit 77
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/addcow-man-ex.XXXXXX") || exit 99
trap 'rm -rf "$T"' EXIT

failed=0
n=0
programs=0
for p in $pages; do
  f=$srcdir/$p
  [ -f "$f" ] || continue
  grep -q '^\.so' "$f" && continue
  # Each .EX block to its own file, roff escapes undone.
  rm -f "$T"/ex.*
  awk -v dir="$T" '/^\.EX/ { k++; on = 1; next }
                   /^\.EE/ { on = 0; next }
                   on { print > (dir "/ex." k) }' "$f"
  for ex in "$T"/ex.*; do
    [ -f "$ex" ] || continue
    grep -q '^main(\|[ *]main(' "$ex" || continue
    programs=$((programs + 1))
    sed -e 's/\\e/\\/g' -e 's/\\-/-/g' -e "s/\\\\(aq/'/g" -e 's/\\(dq/"/g' \
        -e 's/\\&//g' "$ex" >"$T/prog.c"
    n=$((n + 1))
    if $CC -std=c99 -pedantic -Wall -Wextra -Werror -I"$top_srcdir/include" \
           -c "$T/prog.c" -o "$T/prog.o" >"$T/cc.out" 2>&1; then
      echo "ok $n - $p: example program $(basename "$ex" | cut -d. -f2) compiles"
    else
      failed=1
      echo "not ok $n - $p: example program $(basename "$ex" | cut -d. -f2) does not compile"
      sed 's/^/#   /' "$T/cc.out"
    fi
  done
done
if [ "$programs" -eq 0 ]; then
  n=$((n + 1)); failed=1
  echo "not ok $n - no example program found in the pages"
fi
echo "1..$n"
exit $failed
