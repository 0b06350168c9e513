#!/bin/sh
# addcow create: the header bytes it writes (FORMAT.md), the default image
# file name, -i, -b with and without a size, size suffixes, and each error.
. "${srcdir:-.}/testlib.sh"

MAGIC=4144445f434f57ff
# be64 N: N as 16 hex digits
be64() { printf '%016x' "$1"; }
# The hex of a 1024-byte path field holding STRING.
field() {
  _s=$(printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n')
  printf '%s%s' "$_s" "$(hexrep 00 $((1024 - ${#1})))"
}

mkdir vm
run 0 "create vm/disk.add-cow 1M" ac create vm/disk.add-cow 1M
out_empty "create is quiet"
err_empty "create: nothing on stderr"
eq "$(hexat vm/disk.add-cow 0 8)" "$MAGIC" "magic"
eq "$(hexat vm/disk.add-cow 8 4)" 00000001 "version 1"
eq "$(hexat vm/disk.add-cow 12 1024)" "$(field '')" "no backing file: the field is all zeros"
eq "$(hexat vm/disk.add-cow 1036 1024)" "$(field disk.raw)" \
  "default image file: disk.add-cow -> disk.raw, stored relative"
eq "$(hexat vm/disk.add-cow 2060 8)" "$(be64 1048576)" "size 1M = 1048576, big-endian"
eq "$(size_of vm/disk.add-cow)" $((2068 + 256)) "add-cow file = header + 256 bitmap bytes"
eq "$(hexat vm/disk.add-cow 2068 256)" "$(hexrep 00 256)" "bitmap all clear"
eq "$(size_of vm/disk.raw)" 1048576 "image file vm/disk.raw made, virtual size long"

# Default name without the .add-cow suffix, and from another folder.
run 0 "create plain (no suffix)" ac create vm/plain 512
eq "$(hexat vm/plain 1036 1024)" "$(field plain.raw)" "default image file: plain -> plain.raw"
[ -f vm/plain.raw ] && pass "vm/plain.raw exists" || fail "vm/plain.raw missing"

# Size suffixes (powers of 1024), either case.
for s in 2K:2048 3k:3072 1M:1048576 2m:2097152 1G:1073741824 1T:1099511627776 4096:4096; do
  arg=${s%%:*} want=${s#*:}
  run 0 "create with size $arg" ac create "s$arg.add-cow" "$arg"
  eq "$(hexat "s$arg.add-cow" 2060 8)" "$(be64 "$want")" "size $arg = $want bytes"
done

# -i: stored as given, relative to the add-cow file's folder.
run 0 "create -i data.img" ac create -i data.img vm/named.add-cow 4K
eq "$(hexat vm/named.add-cow 1036 1024)" "$(field data.img)" "-i is stored as given"
eq "$(size_of vm/data.img)" 4096 "-i file made in the add-cow file's folder"
[ ! -e data.img ] && pass "-i file not made in the current folder" || fail "data.img in cwd"

# An existing image file is kept (and extended).
fill vm/keep.raw 1000 0x5a
cp vm/keep.raw keep.orig
run 0 "create -i over an existing image file" ac create -i keep.raw vm/keep.add-cow 2K
eq "$(size_of vm/keep.raw)" 2048 "existing image file extended to the size"
head -c 1000 vm/keep.raw >keep.head
same_file keep.head keep.orig "existing image file's bytes kept"

# -b without a size: the backing file's size, rounded up to 512.
fill base.raw 5000 0x11
run 0 "create -b without a size" ac create -b ../base.raw vm/over.add-cow
eq "$(hexat vm/over.add-cow 12 1024)" "$(field ../base.raw)" "-b is stored as given"
eq "$(hexat vm/over.add-cow 2060 8)" "$(be64 5120)" "size from the backing file: 5000 -> 5120"
run 0 "create -b with a size" ac create -b ../base.raw vm/over2.add-cow 64K
eq "$(hexat vm/over2.add-cow 2060 8)" "$(be64 65536)" "explicit size wins over the backing's"
# An add-cow backing file: its virtual size.
run 0 "create over an add-cow image" ac create -b over2.add-cow vm/top.add-cow
eq "$(hexat vm/top.add-cow 2060 8)" "$(be64 65536)" "size of an add-cow backing = its virtual size"

# ---- errors --------------------------------------------------------------

cp vm/disk.add-cow disk.before
run 1 "create over an existing add-cow file" ac create vm/disk.add-cow 2M
err_is_error create "existing file"
err_has "exists" "existing file: says it exists"
same_file vm/disk.add-cow disk.before "existing file untouched"

run 1 "size not a multiple of 512" ac create odd.add-cow 1000
err_is_error create "size 1000"
err_has "512" "size 1000: mentions 512"
[ ! -e odd.add-cow ] && pass "size 1000: no file" || fail "size 1000 left odd.add-cow"

for bad in 12Q abc +5 1.5G 1KB "" 99999999999999999999 20000000T; do
  run 1 "invalid size '$bad'" ac create bad.add-cow "$bad"
  err_has "invalid size '$bad'" "invalid size '$bad': named"
done
[ ! -e bad.add-cow ] && pass "invalid sizes: no file" || fail "bad.add-cow made"

run 1 "too large a size" ac create huge.add-cow 8388608T
err_is_error create "size 2^63"
[ ! -e huge.add-cow ] && pass "size 2^63: no file" || fail "huge.add-cow made"

run 1 "no size and no backing file" ac create nosize.add-cow
err_has "SIZE is needed" "no size: says a size is needed"

run 1 "size 0 with a backing file" ac create -b base.raw zero.add-cow 0
err_is_error create "size 0 with -b"

run 1 "missing backing file" ac create -b nowhere.raw vm/nob.add-cow
err_is_error create "missing backing"
err_has "vm/nowhere.raw" "missing backing: the resolved path is named"
[ ! -e vm/nob.add-cow ] && pass "missing backing: no file" || fail "vm/nob.add-cow made"

long=$(head -c 1100 /dev/zero | tr '\0' a)
run 1 "image file name longer than 1023 bytes" ac create -i "$long" long.add-cow 1M
err_is_error create "long -i"
err_has "1023" "long -i: mentions the limit"
[ ! -e long.add-cow ] && pass "long -i: no file" || fail "long.add-cow made"

run 1 "folder that does not exist" ac create nodir/x.add-cow 1M
err_is_error create "missing folder"

run 1 "FILE ending in /" ac create vm/ 1M
err_is_error create "FILE is a folder name"

finish
