#!/bin/sh
# addcow write / read / resize: the bytes they write and read, checked
# against a model file patched with dd; pattern verification and its
# failure; ranges past the end; -z; suffixes; resize growing, shrinking,
# relative sizes, and their errors.
. "${srcdir:-.}/testlib.sh"

# base.raw: 256 KiB, 0x11 then 0x22 halves.  d.add-cow: 256 KiB over it.
fill base.raw 131072 0x11
fill half 131072 0x22
cat half >>base.raw
cp base.raw model
ac create -b base.raw d.add-cow || fail "setup: create"

# write, and the model alongside.
w() {             # w PATTERN OFF LEN
  run 0 "write -P $1 $2 $3" ac write -P "$1" d.add-cow "$2" "$3"
  out_has "wrote $(numeric "$3")/$(numeric "$3") bytes at offset $(numeric "$2")" "write -P $1 $2 $3: says what it wrote"
  patch model "$(numeric "$2")" "$(numeric "$3")" "$1"
}
numeric() {       # the byte count of a size with a suffix (K, M only here)
  case $1 in
    *K) echo $(( ${1%K} * 1024 ));;
    *M) echo $(( ${1%M} * 1048576 ));;
    *) echo "$1";;
  esac
}
w 0xab 4096 8192          # whole sectors
w 7 1000 10               # inside one sector: copy-on-write of the rest
w 0x5c 130000 2000        # across the 0x11/0x22 boundary, unaligned
w 255 1K 1K               # suffixes
w 0 200000 512            # writing zeros as data

run 0 "read --raw of the whole disk" ac read --raw d.add-cow 0 256K
err_empty "read --raw: nothing on stderr"
same_file "$T/out" model "read --raw: the disk is the model"

run 0 "read -P verifies a written range" ac read -P 0xab d.add-cow 4096 8192
out_has "read 8192/8192 bytes at offset 4096" "read -P: says what it read"
run 0 "read -P of untouched backing data" ac read -P 0x22 d.add-cow 140000 1000
run 0 "read -P 0x11 around the small write" ac read -P 0x11 d.add-cow 1010 14

run 1 "read -P with the wrong byte" ac read -P 0xab d.add-cow 4000 8192
err_is_error read "pattern mismatch"
err_has "Pattern verification failed at offset 4000, 96 bytes (0x11, expected 0xab)" \
  "pattern mismatch: the first differing offset and how many bytes"
run 1 "read -P, mismatch at the end" ac read -P 0xab d.add-cow 8192 4097
err_has "Pattern verification failed at offset 12288, 1 bytes" "mismatch in the last byte"
run 1 "read -P, mismatch at the start" ac read -P 0x22 d.add-cow 131072 131072
err_has "Pattern verification failed at offset 131072, 928 bytes (0x5c" \
  "mismatch in the first bytes"

# Ranges larger than the tool's 1 MiB buffer.
ac create big.add-cow 3M || fail "setup: create big"
run 0 "write 3M" ac write -P 0x42 big.add-cow 0 3M
run 1 "write 1 past 3M" ac write -P 0x42 big.add-cow 1 3M
fill bigmodel 3145728 0x42
run 0 "write inside the third MiB" ac write -P 1 big.add-cow 2621445 3
patch bigmodel 2621445 3 1
run 1 "read -P 3M: mismatch in the third MiB" ac read -P 0x42 big.add-cow 0 3M
err_has "Pattern verification failed at offset 2621445, 3 bytes (0x01, expected 0x42)" \
  "mismatch found in a later chunk"
run 0 "read --raw 3M" ac read --raw big.add-cow 0 3M
same_file "$T/out" bigmodel "read --raw 3M: the model"

run 0 "read without -P" ac read d.add-cow 0 512
out_has "read 512/512 bytes at offset 0" "plain read"
run 0 "read -q" ac read -q -P 0xab d.add-cow 4096 512
out_empty "read -q: nothing on stdout"
run 0 "write -q" ac write -q -P 0xab d.add-cow 4096 512
out_empty "write -q: nothing on stdout"
run 0 "options after the arguments" ac read d.add-cow 4096 512 -P 0xab -q
run 0 "pattern in decimal" ac read -q -P 171 d.add-cow 4096 512

# write with the default pattern, and -z.
run 0 "write with the default pattern" ac write d.add-cow 65536 1000
patch model 65536 1000 0xcd
run 0 "default pattern is 0xcd" ac read -P 0xcd d.add-cow 65536 1000
run 0 "write -z" ac write -z d.add-cow 4096 4096
patch model 4096 4096 0
run 0 "write -z -u" ac write -z -u d.add-cow 8192 2048
patch model 8192 2048 0
run 0 "write -z reads zeros" ac read -P 0 d.add-cow 4096 6144
ac read --raw d.add-cow 0 256K >disk.now || fail "read --raw"
same_file disk.now model "after -z: the disk is the model"
run 0 "zero-length write at the end" ac write d.add-cow 256K 0
run 0 "zero-length read at the end" ac read d.add-cow 256K 0

# ---- past the end: refused whole, nothing written ------------------------------
cp d.add-cow before.add-cow
cp d.raw before.raw
run 1 "write reaching past the end" ac write -P 1 d.add-cow 262000 1000
err_is_error write "write past the end"
err_has "reaches past the end" "write past the end: says so"
run 1 "write starting past the end" ac write -P 1 d.add-cow 1M 1
run 1 "write -z reaching past the end" ac write -z d.add-cow 262000 1000
err_is_error write "write -z past the end"
same_file d.add-cow before.add-cow "past the end: bitmap untouched"
same_file d.raw before.raw "past the end: image file untouched"
run 1 "read reaching past the end" ac read -P 0x22 d.add-cow 262000 1000
err_has "reaches past the end" "read past the end: says so"
out_empty "read past the end: nothing on stdout"

# ---- argument errors ------------------------------------------------------------
for p in 256 -1 0x100 x ""; do
  run 1 "pattern '$p'" ac write -P "$p" d.add-cow 0 1
  err_has "invalid pattern" "pattern '$p': refused"
done
run 1 "read -P with --raw" ac read -P 1 --raw d.add-cow 0 1
err_has "do not go together" "-P --raw: refused"
run 1 "write -P with -z" ac write -P 1 -z d.add-cow 0 1
run 1 "write -u without -z" ac write -u d.add-cow 0 1
err_has "-u needs -z" "-u alone: refused"
run 1 "write --raw" ac write --raw d.add-cow 0 1
run 1 "bad offset" ac write d.add-cow 1x 1
err_has "invalid offset '1x'" "bad offset: named"
run 1 "bad length" ac read d.add-cow 0 -1
run 1 "offset + length overflows" ac read d.add-cow 18446744073709551615 2
run 1 "write to a missing image" ac write nothing.add-cow 0 1
err_is_error write "missing image"
err_has "nothing.add-cow" "missing image: named"
run 1 "read a missing image" ac read nothing.add-cow 0 1
err_has "nothing.add-cow" "read missing image: named"
same_file d.add-cow before.add-cow "argument errors wrote nothing"

if hold d.add-cow ro; then
  run 1 "write while a reader has the image" ac write d.add-cow 0 1
  err_has "in use" "write while in use: the library says why"
  run 0 "read while a reader has the image" ac read d.add-cow 0 1
  release
else
  fail "hold-image d.add-cow ro"
fi

# ---- resize ------------------------------------------------------------------------
# Grow a 128 KiB overlay of the 256 KiB base to 256 KiB: the new half reads
# zeros, not the base's 0x22.
ac create -b base.raw r.add-cow 128K || fail "setup: create r"
run 0 "resize to an absolute size" ac resize r.add-cow 256K
out_empty "resize is quiet"
eq "$(vsize r.add-cow)" 262144 "resize 256K: virtual size"
run 0 "grown area reads zeros, not the backing file" ac read -P 0 r.add-cow 128K 128K
run 0 "old area still reads the backing file" ac read -P 0x11 r.add-cow 0 128K
run 0 "resize +64K" ac resize r.add-cow +64K
eq "$(vsize r.add-cow)" 327680 "resize +64K: virtual size"
ac write -q -P 0x77 r.add-cow 300000 1000 || fail "write before shrinking"
run 1 "shrinking without --shrink" ac resize r.add-cow -32K
err_has "use --shrink" "shrink without --shrink: says how"
eq "$(vsize r.add-cow)" 327680 "shrink without --shrink: size unchanged"
run 1 "absolute shrink without --shrink" ac resize r.add-cow 1K
run 0 "resize --shrink -32K" ac resize --shrink r.add-cow -32K
eq "$(vsize r.add-cow)" 294912 "resize -32K: virtual size"
run 0 "resize --shrink after the file" ac resize r.add-cow --shrink 1K
eq "$(vsize r.add-cow)" 1024 "resize 1K: virtual size"
run 0 "grow again: the dropped data is gone" ac resize r.add-cow 320K
run 0 "dropped data reads zeros after growing" ac read -P 0 r.add-cow 300000 1000
run 0 "resize to the same size" ac resize r.add-cow 320K
run 0 "resize -- -0 (the size after --)" ac resize r.add-cow -- -0
eq "$(vsize r.add-cow)" 327680 "resize -0: unchanged"

run 1 "resize to a size not a multiple of 512" ac resize r.add-cow 400000
err_is_error resize "size 400000"
err_has "512" "size 400000: mentions 512"
run 1 "resize -SIZE larger than the disk" ac resize --shrink r.add-cow -1M
err_has "cannot shrink it by" "shrink below zero: refused"
for bad in +x 1Q "+" "--"; do
  run 1 "resize '$bad'" ac resize r.add-cow "$bad"
  err_is_error resize "resize '$bad'"
done
run 1 "resize with no size" ac resize r.add-cow
run 1 "resize of a missing image" ac resize nothing.add-cow 1M
err_has "nothing.add-cow" "resize missing: named"
run 1 "resize past the largest size" ac resize r.add-cow 8388608T
err_is_error resize "resize 2^63"
eq "$(vsize r.add-cow)" 327680 "failed resizes left the size"

finish
