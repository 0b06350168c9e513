#!/bin/bash
# The nbdkit plugin with real clients that this project did not write:
# qemu-img and qemu-io (Debian's qemu-utils) and nbdinfo (libnbd-bin).
# Exit 77 (skipped) where nbdkit or a client is missing.
#
#  1. qemu-img convert of the exported disk equals the library's own reads;
#  2. qemu-io writes a pattern through NBD, then the library reads exactly
#     that, with the bits of the written sectors set;
#  3. nbdinfo --map shows the same runs as addcow_block_status;
#  4. qemu-img compare of the exported disk against a qcow2 overlay built
#     by qemu-img with the same writes over the same backing file;
#  5. configuration errors (at the end);
#  6. the thread model and the capabilities a client sees;
#  7. trim, and qemu-img convert -n into the export (zero with may-trim);
#  8. fast zero, with libnbd's Python binding where it is installed.
set -euo pipefail
: "${top_builddir:=../..}"
top_builddir=$(cd "$top_builddir" && pwd)
plugin=$top_builddir/plugins/nbdkit/.libs/nbdkit-addcow-plugin.so
tool=$top_builddir/tools/addcow
export LD_LIBRARY_PATH=$top_builddir/lib/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

if [ -n "${ADDCOW_SANITIZED:-}" ]; then
  echo "SKIP: built with $ADDCOW_SANITIZED; nbdkit cannot load a sanitized plugin"; exit 77
fi
for t in nbdkit qemu-img qemu-io nbdinfo; do
  command -v "$t" >/dev/null || { echo "SKIP: $t is not installed"; exit 77; }
done
[ -f "$plugin" ] || { echo "SKIP: the plugin was not built"; exit 77; }
[ -x "$tool" ] || { echo "no tool at $tool"; exit 1; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/addcow-nbdkit.XXXXXX")
pidfile=$dir/nbdkit.pid
cleanup() {
  stop_server || true
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

uri() { echo "nbd+unix:///?socket=$dir/sock"; }

start_server() {   # start_server ARGS... (plugin parameters)
  rm -f "$dir/sock" "$pidfile"
  nbdkit -U "$dir/sock" -P "$pidfile" "$plugin" "$@"
  for _ in $(seq 100); do [ -S "$dir/sock" ] && [ -s "$pidfile" ] && return 0; sleep 0.05; done
  fail "nbdkit did not start"
}

stop_server() {   # waits until nbdkit has closed the image (its final flush)
  [ -s "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  rm -f "$pidfile"
}

cd "$dir"
size=$((8 << 20))
# base.raw: a pattern in the first 6 MiB, a hole in the last 2 MiB.
head -c $((6 << 20)) /dev/urandom > base.raw
truncate -s $size base.raw

"$tool" create -b base.raw -i vm.raw vm.add-cow >/dev/null
"$tool" write -P 0x11 vm.add-cow 1M 64K >/dev/null
"$tool" write -P 0x22 vm.add-cow $((3 << 20)) 1000 >/dev/null       # partial sectors
"$tool" write -z vm.add-cow $((7 << 20)) 4096 >/dev/null

# 1. qemu-img convert through NBD == the library's own reads.
start_server file=vm.add-cow readonly=true
qemu-img convert -f raw -O raw "$(uri)" via-nbd.raw
stop_server
"$tool" convert vm.add-cow via-lib.raw
cmp via-nbd.raw via-lib.raw || fail "qemu-img convert over NBD differs from the library's reads"
echo "ok 1: qemu-img convert equals the library's reads"

# 2. qemu-io writes through NBD; the library reads exactly that.
start_server file=vm.add-cow
qemu-io -f raw -c "write -P 0xab 5000 70000" "$(uri)" >/dev/null
qemu-io -f raw -c "write -z 2097152 65536" "$(uri)" >/dev/null
qemu-io -f raw -c "flush" "$(uri)" >/dev/null
stop_server
"$tool" read -P 0xab vm.add-cow 5000 70000 >/dev/null || fail "the library does not read qemu-io's pattern"
"$tool" read -P 0x00 vm.add-cow 2097152 65536 >/dev/null || fail "the zeroed range does not read zeros"
# the untouched bytes of the first and last sectors kept the backing data
cmp -n 904 -i 4096:0 base.raw <("$tool" read --raw vm.add-cow 4096 904) \
  || fail "copy-on-write lost the backing bytes before the write"
# the bits: sectors 9 .. 146 (bytes 4608 .. 75264) are allocated
"$tool" map --output=json vm.add-cow > map.json
python3 - map.json <<'EOF' || fail "the written sectors are not allocated"
import json, sys
runs = json.load(open(sys.argv[1]))
def allocated(off):
    for r in runs:
        if r["start"] <= off < r["start"] + r["length"]:
            return r["depth"] == 0 and r["data"]
    return False
for s in range(4608 // 512, (5000 + 70000 + 511) // 512):
    assert allocated(s * 512), s
EOF
echo "ok 2: qemu-io's writes read back through the library, bits set"

# 3. nbdinfo --map == addcow_block_status (zero runs are hole+zero; all
#    else is data), after merging neighbours of the same kind.
start_server file=vm.add-cow readonly=true
nbdinfo --map --json "$(uri)" > nbd-map.json
stop_server
python3 - nbd-map.json map.json <<'EOF' || fail "nbdinfo --map differs from the library's runs"
import json, sys
nbd = json.load(open(sys.argv[1]))
lib = json.load(open(sys.argv[2]))
def merged(runs):
    out = []
    for start, length, kind in runs:
        if out and out[-1][2] == kind and out[-1][0] + out[-1][1] == start:
            out[-1][1] += length
        else:
            out.append([start, length, kind])
    return out
a = merged([(r["offset"], r["length"], r["type"]) for r in nbd])
b = merged([(r["start"], r["length"], 3 if (r["zero"] and not r["data"]) else 0) for r in lib])
if a != b:
    print("nbdinfo:", a)
    print("library:", b)
    sys.exit(1)
EOF
echo "ok 3: nbdinfo --map equals addcow_block_status"

# 4. qemu-img compare against a qcow2 overlay given the same writes.
"$tool" create -b base.raw -i cmp.raw cmp.add-cow >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw ref.qcow2
start_server file=cmp.add-cow
for w in "write -P 0x5a 0 4096" "write -P 0x6b 12345 100000" "write -z 4194304 8192" \
         "write -P 0x7c 8388096 512"; do
  qemu-io -f raw -c "$w" "$(uri)" >/dev/null
  qemu-io -f qcow2 -c "$w" ref.qcow2 >/dev/null
done
qemu-img compare -f raw -F qcow2 "$(uri)" ref.qcow2 >/dev/null || fail "qemu-img compare found a difference"
# and a write to one side only must be found
qemu-io -f raw -c "write -P 0x01 65536 512" "$(uri)" >/dev/null
if qemu-img compare -q -f raw -F qcow2 "$(uri)" ref.qcow2 2>/dev/null; then
  fail "qemu-img compare missed a difference"
fi
stop_server
echo "ok 4: qemu-img compare against a qcow2 overlay with the same writes"

# 6. What the plugin offers, as a client sees it: parallel requests and
#    every capability; read-only when asked.
nbdkit --dump-plugin "$plugin" > dump.txt
grep -qx "thread_model=parallel" dump.txt || fail "thread model is not parallel: $(grep thread dump.txt)"
start_server file=vm.add-cow
nbdinfo --json "$(uri)" > info.json
stop_server
start_server file=vm.add-cow readonly=true
nbdinfo --json "$(uri)" > info-ro.json
stop_server
python3 - info.json info-ro.json <<'EOF' || fail "the capabilities differ from what the plugin offers"
import json, sys
rw = json.load(open(sys.argv[1]))["exports"][0]
ro = json.load(open(sys.argv[2]))["exports"][0]
for k in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn"):
    assert rw[k] is True, (k, rw[k])
assert rw["is_read_only"] is False and ro["is_read_only"] is True, (rw["is_read_only"], ro["is_read_only"])
assert "base:allocation" in rw["contexts"]
assert rw["export-size"] == 8 << 20
EOF
echo "ok 6: thread model parallel; flush, FUA, trim, zero, fast zero, multi-conn, extents; readonly"

# 7. Trim, then qemu-img convert -n into the export (qemu zeroes the
#    target's zero ranges with may-trim zero requests): the library reads
#    exactly the source.
"$tool" create -b base.raw -i t.raw t.add-cow >/dev/null
start_server file=t.add-cow
qemu-io -f raw -c "write -P 0x3c 0 1M" "$(uri)" >/dev/null
qemu-io -f raw -c "discard 512K 256K" "$(uri)" >/dev/null
stop_server
"$tool" read -P 0x3c t.add-cow 0 512K >/dev/null || fail "trim damaged the bytes before it"
"$tool" read -P 0x00 t.add-cow 512K 256K >/dev/null || fail "a trimmed range does not read as zeros"
"$tool" read -P 0x3c t.add-cow 768K 256K >/dev/null || fail "trim damaged the bytes after it"
head -c $((2 << 20)) /dev/urandom > src.raw
truncate -s $size src.raw                                   # data, then a hole
dd if=/dev/zero of=src.raw bs=64K seek=8 count=4 conv=notrunc status=none  # zeros amid data
start_server file=t.add-cow
qemu-img convert -n -f raw -O raw src.raw "$(uri)"
stop_server
"$tool" convert t.add-cow t-out.raw
cmp src.raw t-out.raw || fail "qemu-img convert -n into the export: the library reads other bytes"
echo "ok 7: trim reads as zeros; qemu-img convert -n into the export reads back exactly"

# 8. Fast zero, with libnbd's Python binding (python3-libnbd) where it is
#    installed: refused with ENOTSUP where it would write zero bytes (data,
#    no trim allowed); done where it is cheap (may trim, whole sectors; a
#    range that already reads as zeros), and then the range reads zeros.
pynbd=
for p in python3 /usr/bin/python3; do
  if "$p" -c 'import nbd' 2>/dev/null; then pynbd=$p; break; fi
done
if [ -n "$pynbd" ]; then
  "$tool" create -b base.raw -i fz.raw fz.add-cow 10M >/dev/null   # 8M..10M: past the base, zeros
  start_server file=fz.add-cow
  "$pynbd" - "$(uri)" <<'EOF' || fail "fast zero is not honoured"
import errno, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
K = 65536
h.pwrite(b"\x55" * K, 0)
def refused(off, n, flags):
    try:
        h.zero(n, off, flags)
    except nbd.Error as e:
        # (libnbd gives the errno as its name in some versions)
        assert e.errno in (errno.ENOTSUP, "ENOTSUP", "EOPNOTSUPP"), (off, n, e.errno, e.string)
        return True
    return False
fast, keep = nbd.CMD_FLAG_FAST_ZERO, nbd.CMD_FLAG_NO_HOLE
assert refused(0, K, fast | keep), "fast zero without trim over data was done"
assert h.pread(K, 0) == b"\x55" * K, "a refused fast zero changed the data"
assert refused(4096 + 7, 100, fast), "an unaligned fast zero over data was done"
assert refused(2 << 20, K, fast | keep), "fast zero without trim over backing data was done"
assert not refused(0, K, fast), "fast zero with trim allowed, whole sectors, was refused"
assert h.pread(K, 0) == bytes(K)
assert not refused(9 << 20, K, fast | keep), "fast zero of a range that reads zeros already (past the base) was refused"
assert h.pread(K, 9 << 20) == bytes(K)
h.zero(K, 2 << 20, keep)               # the plain zero request always works
assert h.pread(K, 2 << 20) == bytes(K)
h.flush()
h.shutdown()
EOF
  stop_server
  "$tool" read -P 0x00 fz.add-cow 0 64K >/dev/null || fail "the fast-zeroed range does not read zeros after close"
  echo "ok 8: fast zero refused (ENOTSUP) where it would write, done where cheap"
else
  echo "skip 8: libnbd's Python binding (python3-libnbd) is not installed"
fi

# Errors: a missing file and a bad option fail at start-up with a message.
if nbdkit -U "$dir/sock2" "$plugin" file=nope.add-cow cache=sometimes 2> err.txt; then
  fail "nbdkit started with cache=sometimes"
fi
grep -q "cache" err.txt || fail "no message naming the bad option: $(cat err.txt)"
if nbdkit -U "$dir/sock2" "$plugin" 2> err.txt; then fail "nbdkit started without file="; fi
grep -q "file" err.txt || fail "no message about file=: $(cat err.txt)"
echo "ok 5: configuration errors are refused with a message"
