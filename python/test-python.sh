#!/bin/sh
# Runs the Python binding's unittest suite against the library just built
# (found by its soname through LD_LIBRARY_PATH, as an installed one would
# be through the loader's path).  Skipped (77) without python3.
: "${top_builddir:=..}" "${srcdir:=.}"
command -v python3 >/dev/null || { echo "SKIP: no python3"; exit 77; }
if [ -n "${ADDCOW_SANITIZED:-}" ]; then
  echo "SKIP: built with $ADDCOW_SANITIZED; python3 cannot load a sanitized library"; exit 77
fi
LD_LIBRARY_PATH=$(cd "$top_builddir/lib/.libs" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
cd "$srcdir" || exit 1
exec python3 -B -m unittest -v test_addcow
