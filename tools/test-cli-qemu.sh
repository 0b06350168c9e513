#!/bin/sh
# Against QEMU, where qemu-img and qemu-io are installed (skipped, 77,
# otherwise): the same writes through addcow over a raw base and through
# qemu-io into a qcow2 over the same base must give the same disk, for
# `qemu-img compare` (of convert's output, and of the raw image file after
# hydrate and detach); a different write must make compare fail; and map's
# JSON uses qemu-img map's member names.
. "${srcdir:-.}/testlib.sh"

command -v qemu-img >/dev/null 2>&1 && command -v qemu-io >/dev/null 2>&1 ||
  { echo "# qemu-img or qemu-io not found: skipped"; exit 77; }

M=1048576
fill base.raw $M 0x11
head -c $M /dev/zero >>base.raw

ac create -b base.raw vm.add-cow || fail "setup: create"
qemu-img create -q -f qcow2 -b base.raw -F raw q.qcow2 || fail "setup: qcow2"
both() {          # both QEMU-IO-COMMAND: the same write on both images
  # shellcheck disable=SC2086
  set -- $1
  if [ "$1" = "write" ] && [ "$2" = "-z" ]; then
    ac write -q -z vm.add-cow "$3" "$4" || fail "addcow write -z $3 $4"
  else
    ac write -q -P "$3" vm.add-cow "$4" "$5" || fail "addcow write -P $3 $4 $5"
  fi
  qemu-io -f qcow2 -c "$*" q.qcow2 >/dev/null || fail "qemu-io $*"
}
both "write -P 0xab 4096 65536"
both "write -P 0x01 100 7"
both "write -P 0xcd 1048000 1000"
both "write -z 300000 5000"
both "write -P 0x77 2096640 512"

run 0 "convert" ac convert vm.add-cow vm.out
run 0 "qemu-img compare: convert's output = the qcow2" \
  qemu-img compare -f raw -F qcow2 vm.out q.qcow2
run 0 "hydrate" ac hydrate vm.add-cow
run 0 "detach" ac detach vm.add-cow
run 0 "qemu-img compare: the raw image file = the qcow2" \
  qemu-img compare -f raw -F qcow2 vm.raw q.qcow2

qemu-io -f qcow2 -c "write -P 0x99 5000 1" q.qcow2 >/dev/null || fail "qemu-io: extra write"
run 1 "qemu-img compare sees one different byte" qemu-img compare -f raw -F qcow2 vm.out q.qcow2
out_has "Content mismatch" "qemu-img compare: reports the mismatch"

# map --output=json: qemu-img map's member names.
if command -v python3 >/dev/null 2>&1; then
  ac create -b base.raw m.add-cow || fail "setup: m"
  ac write -q -P 1 m.add-cow 0 512 || fail "m: write"
  ac map --output=json m.add-cow >ours.json || fail "addcow map"
  qemu-img map --output=json -f qcow2 q.qcow2 >theirs.json || fail "qemu-img map"
  if python3 - ours.json theirs.json <<'EOP' >py.out 2>&1
import json, sys
ours = json.load(open(sys.argv[1]))
theirs = json.load(open(sys.argv[2]))
keys = set().union(*(e.keys() for e in theirs))
for e in ours:
    assert set(e) <= keys, (sorted(e), sorted(keys))
    for k in ("present", "zero", "data"):
        assert isinstance(e[k], bool)
    for k in ("start", "length", "depth"):
        assert isinstance(e[k], int)
EOP
  then pass "map json: member names and types as qemu-img map's"
  else fail "map json vs qemu-img map: $(tail -1 py.out)"
  fi
fi

finish
