#!/bin/sh
# The shared library exports exactly what the version script
# lib/libaddcow.syms lists, each name with its node's version (name@@NODE,
# from nm -D), and nothing else; the version script still holds every call
# of API.md in ADDCOW_1.0 (a call is never moved or removed); the soname is
# libaddcow.so.1.
set -e
: "${top_srcdir:=..}" "${top_builddir:=..}"
# The newest one: a build folder may keep the file of an older version.
so=$(ls -t "$top_builddir"/lib/.libs/libaddcow.so.*.*.* 2>/dev/null | head -1)
[ -n "$so" ] || { echo "no shared library built"; exit 77; }
command -v nm >/dev/null || { echo "no nm"; exit 77; }
syms=$top_srcdir/lib/libaddcow.syms
[ -f "$syms" ] || { echo "no version script at $syms"; exit 1; }

# name@@NODE for every global of the version script.
want_v=$(sed -e 's,/\*.*\*/,,g' -e '/^ *\/\?\*/d' "$syms" | awk '
  /^[A-Za-z_][A-Za-z0-9_.]* *\{/ { node = $1; sub(/\{.*/, "", node); local = 0; next }
  /local:/ { local = 1; next }
  /global:/ { local = 0; next }
  /^ *\}/ { node = ""; next }
  node != "" && !local && /^[ \t]*[A-Za-z_][A-Za-z0-9_]*;/ {
    gsub(/[ \t;]/, ""); print $0 "@@" node }' | sort)
[ "$(echo "$want_v" | grep -c .)" -ge 21 ] || { echo "could not read the version script:"; echo "$want_v"; exit 1; }

got=$(nm -D --defined-only "$so" | awk '$2 ~ /^[TDBRVWiu]$/ {print $3}' | sort)
if [ "$got" != "$want_v" ]; then
  echo "exported symbols differ from lib/libaddcow.syms (< script, > library):"
  echo "$want_v" > exp.$$; echo "$got" > got.$$
  diff exp.$$ got.$$ || true; rm -f exp.$$ got.$$
  exit 1
fi

# The calls of API.md, all in ADDCOW_1.0 for good.
api_1_0='addcow_block_status addcow_close addcow_create addcow_flush addcow_get_allocated_bytes
addcow_get_backing_file addcow_get_image_file addcow_get_size addcow_last_error addcow_open
addcow_options_free addcow_options_new addcow_options_set addcow_pread addcow_preadv
addcow_probe addcow_pwrite addcow_pwritev addcow_truncate addcow_version addcow_write_zeroes'
for f in $api_1_0; do
  echo "$want_v" | grep -qx "$f@@ADDCOW_1.0" || { echo "$f is not in ADDCOW_1.0 of the version script"; exit 1; }
done

# The soname is libaddcow.so.1.
if command -v objdump >/dev/null; then
  objdump -p "$so" | grep -q 'SONAME *libaddcow\.so\.1$' || { echo "soname is not libaddcow.so.1"; exit 1; }
fi
echo "exports ok: $(echo "$want_v" | wc -l) names, as lib/libaddcow.syms lists them:"
echo "$want_v" | sed 's/.*@@//' | sort | uniq -c
