#!/bin/sh
# The shared library exports exactly the public calls of API.md, each with
# the version node of the release that added it (ADDCOW_1.0, ADDCOW_1.1),
# and nothing else.
set -e
: "${top_srcdir:=..}" "${top_builddir:=..}"
# The newest one: a build folder may keep the file of an older version.
so=$(ls -t "$top_builddir"/lib/.libs/libaddcow.so.*.*.* 2>/dev/null | head -1)
[ -n "$so" ] || { echo "no shared library built"; exit 77; }
command -v nm >/dev/null || { echo "no nm"; exit 77; }
expected='addcow_block_status addcow_close addcow_create addcow_flush addcow_get_allocated_bytes
addcow_get_backing_file addcow_get_image_file addcow_get_size addcow_last_error addcow_open
addcow_options_free addcow_options_new addcow_options_set addcow_pread addcow_preadv
addcow_probe addcow_pwrite addcow_pwritev addcow_truncate addcow_version addcow_write_zeroes'
# Added in ABI 1.1.
expected_1_1='addcow_commit addcow_detach addcow_hydrate'
want=$(echo $expected $expected_1_1 | tr ' ' '\n' | sort)
got=$(nm -D --defined-only "$so" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | sort)
want_v=$( { echo $expected | tr ' ' '\n' | sed 's/$/@@ADDCOW_1.0/'
            echo $expected_1_1 | tr ' ' '\n' | sed 's/$/@@ADDCOW_1.1/'; } | sort)
if [ "$got" != "$want_v" ]; then
  echo "exported symbols differ from the public API:"
  echo "$want_v" > exp.$$; echo "$got" > got.$$
  diff exp.$$ got.$$ || true; rm -f exp.$$ got.$$
  exit 1
fi
# The soname is libaddcow.so.1.
if command -v objdump >/dev/null; then
  objdump -p "$so" | grep -q 'SONAME *libaddcow\.so\.1$' || { echo "soname is not libaddcow.so.1"; exit 1; }
fi
echo "exports ok: $(echo "$want" | wc -l) calls, ADDCOW_1.0 and ADDCOW_1.1"
