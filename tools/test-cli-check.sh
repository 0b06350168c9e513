#!/bin/sh
# addcow check [-r]: each finding on images damaged by hand (dd, from the
# layout in FORMAT.md), its exit code (0 clean, 1 not completed, 2 corrupt,
# 3 harmless), that check alone changes nothing, and that -r repairs what
# it says, byte for byte, and leaves the data alone.
. "${srcdir:-.}/testlib.sh"

# fresh NAME: NAME.add-cow, 9 sectors (4608 bytes): a 2-byte bitmap whose
# last byte has 1 real bit (sector 8) and 7 stray ones; image file NAME.raw.
fresh() {
  rm -rf "$1.add-cow" "$1.raw"
  ac create "$1.add-cow" 4608 || fail "setup: create $1"
}
unchanged() {     # unchanged FILE COPY DESC
  same_file "$1" "$2" "$3: check without -r changed nothing"
}

# ---- clean --------------------------------------------------------------------
fresh c
run 0 "clean image" ac check c.add-cow
out_has "No errors were found on the image." "clean: says so"
out_has "0/4608 bytes = 0.00% allocated" "clean: allocation line"
err_empty "clean: nothing on stderr"
ac write -q -P 0x33 c.add-cow 4096 512 || fail "setup: write sector 8"
run 0 "clean image with sector 8 written" ac check c.add-cow
out_has "512/4608 bytes = 11.11% allocated" "sector 8 counted"
eq "$(hexat c.add-cow 2069 1)" 01 "sector 8's bit is bit 0 of byte 2069"

# ---- stray bits past the end (harmless, 3) -------------------------------------
poke c.add-cow 2069 ff
cp c.add-cow c.copy
run 3 "stray bits past the last sector" ac check c.add-cow
out_has "Warning: bitmap: bits are set past the last sector" "stray bits: reported"
out_has "1 harmless issues were found on the image (check -r repairs them)." "stray bits: summary"
unchanged c.add-cow c.copy "stray bits"
run 0 "check -r, stray bits" ac check -r c.add-cow
out_has "Repaired: cleared the bits past the last sector" "stray bits: -r says what it did"
out_has "1 issues were repaired." "stray bits: -r summary"
eq "$(hexat c.add-cow 2069 1)" 01 "stray bits: cleared, sector 8's bit kept"
run 0 "check after -r" ac check c.add-cow
run 0 "data kept" ac read -P 0x33 c.add-cow 4096 512

# ---- size not a multiple of 512 (harmless) ------------------------------------------
fresh c
poke c.add-cow 2060 0000000000001264          # 4708
cp c.add-cow c.copy
run 3 "size 4708" ac check c.add-cow
out_has "Warning: header: size 4708 is not a multiple of 512 (the virtual size is 4608)" \
  "size 4708: reported"
unchanged c.add-cow c.copy "size 4708"
run 0 "check -r, size 4708" ac check -r c.add-cow
eq "$(hexat c.add-cow 2060 8)" 0000000000001200 "size 4708: rounded down to 4608"

# ---- bytes after a path's NUL (harmless) -----------------------------------------------
fresh c
poke c.add-cow 1056 ff                        # image_file = "c.raw", then junk
poke c.add-cow 1035 01                        # last byte of backing_file
cp c.add-cow c.copy
run 3 "junk after the NULs" ac check c.add-cow
out_has "Warning: header: the backing_file field has non-zero bytes after its NUL" \
  "junk: backing field reported"
out_has "Warning: header: the image_file field has non-zero bytes after its NUL" \
  "junk: image field reported"
out_has "2 harmless issues were found" "junk: two issues"
unchanged c.add-cow c.copy "junk"
run 0 "check -r, junk" ac check -r c.add-cow
out_has "2 issues were repaired." "junk: both repaired"
eq "$(hexat c.add-cow 1056 1)$(hexat c.add-cow 1035 1)" 0000 "junk: zeroed"
eq "$(hexat c.add-cow 1036 6)" "632e72617700" "junk: image_file still c.raw"

# ---- image file shorter / longer ----------------------------------------------------------
fresh c
ac write -q -P 0x44 c.add-cow 0 1024 || fail "setup: write"
truncate -s 1000 c.raw
run 3 "image file shorter than the virtual size" ac check c.add-cow
out_has "Warning: image file 'c.raw' is 1000 bytes long, shorter than the virtual size 4608" \
  "short image file: reported"
eq "$(size_of c.raw)" 1000 "short image file: check alone leaves it"
run 0 "check -r, short image file" ac check -r c.add-cow
out_has "Repaired: extended the image file to 4608 bytes (sparse)" "short image file: -r says so"
eq "$(size_of c.raw)" 4608 "short image file: extended"
run 0 "short image file: data before the old end kept" ac read -P 0x44 c.add-cow 0 1000
run 0 "short image file: allocated bytes past it read zeros" ac read -P 0 c.add-cow 1000 24

truncate -s 10000 c.raw
run 0 "image file longer than the virtual size" ac check c.add-cow
out_has "Note: image file 'c.raw' is 10000 bytes long, longer than the virtual size" \
  "long image file: noted"
printf 'extra' >>c.add-cow
run 0 "add-cow file longer than needed" ac check c.add-cow
out_has "Note: the add-cow file has 5 bytes after the bitmap (ignored)" "long add-cow file: noted"

# ---- the add-cow file too short for its bitmap (corrupt, 2; -r extends) -------------------------
rm -f s.add-cow s.raw
ac create s.add-cow 1M || fail "setup: create s"       # bitmap: 256 bytes
ac write -q -P 0x55 s.add-cow 0 512 || fail "setup: write s"
truncate -s $((2068 + 100)) s.add-cow
cp s.add-cow s.copy
run 2 "bitmap cut short" ac check s.add-cow
out_has "ERROR: the add-cow file is 2168 bytes long; the header and the bitmap of 2048 sectors need 2324" \
  "short bitmap: reported"
out_has "1 errors were found on the image." "short bitmap: summary"
unchanged s.add-cow s.copy "short bitmap"
run 0 "check -r, bitmap cut short" ac check -r s.add-cow
out_has "Repaired: extended the add-cow file to 2324 bytes with zero bitmap bytes: sectors 800 and up" \
  "short bitmap: -r says what it did and what it means"
eq "$(size_of s.add-cow)" 2324 "short bitmap: extended"
eq "$(hexat s.add-cow 2068 1)" 01 "short bitmap: the bits that were there kept"
eq "$(hexat s.add-cow 2168 156)" "$(hexrep 00 156)" "short bitmap: new bytes are zero"
run 0 "short bitmap: data kept" ac read -P 0x55 s.add-cow 0 512

# ---- header corruptions (2) -------------------------------------------------------------------
fresh c
patch c.add-cow 12 1024 0x61                  # backing_file: 1024 x 'a', no NUL
cp c.add-cow c.copy
run 2 "backing_file field without a NUL" ac check c.add-cow
out_has "ERROR: header: the backing_file field has no NUL in its 1024 bytes" "no NUL: reported"
run 2 "check -r cannot repair a field without a NUL" ac check -r c.add-cow
same_file c.add-cow c.copy "no NUL: -r leaves it"

fresh c
patch c.add-cow 1036 1024 0
run 2 "empty image_file field" ac check c.add-cow
out_has "ERROR: header: the image_file field is empty" "empty image_file: reported"

fresh c
poke c.add-cow 2060 ffffffffffffffff
run 2 "size 2^64-1" ac check c.add-cow
out_has "ERROR: header: size 18446744073709551615 is larger than the largest virtual size" \
  "huge size: reported"
poke c.add-cow 2060 8000000000000000
run 2 "size 2^63" ac check c.add-cow

fresh c
head -c 1000 c.add-cow >t.add-cow
run 2 "header cut at 1000 bytes" ac check t.add-cow
out_has "ERROR: header: the file is only 1000 bytes long (a header is 2068)" "short header: reported"
head -c 10 c.add-cow >t.add-cow
run 2 "header cut at 10 bytes" ac check t.add-cow

# ---- files ------------------------------------------------------------------------------------
fresh c
rm c.raw
run 2 "image file missing" ac check c.add-cow
out_has "ERROR: image file 'c.raw': No such file or directory" "missing image file: reported"
run 2 "check -r cannot bring back an image file" ac check -r c.add-cow
[ ! -e c.raw ] && pass "missing image file: -r does not make one" || fail "c.raw made"
mkdir c.raw
run 2 "image file is a directory" ac check c.add-cow
out_has "ERROR: image file 'c.raw' is a directory" "directory image file: reported"
rmdir c.raw

fresh c
patch c.add-cow 1036 1024 0
printf 'c.add-cow' | dd of=c.add-cow bs=1 seek=1036 conv=notrunc status=none
cp c.add-cow c.copy
run 2 "image file is the add-cow file" ac check -r c.add-cow
out_has "ERROR: image file 'c.add-cow' is the add-cow file itself" "self as image file: reported"
same_file c.add-cow c.copy "self as image file: -r does not touch it"

mkdir -p sub
fill sub/b.raw 4608 0x22
ac create -b b.raw sub/o.add-cow || fail "setup: create sub/o"
run 0 "image with a backing file" ac check sub/o.add-cow
mv sub/b.raw sub/b.gone
run 2 "backing file missing" ac check sub/o.add-cow
out_has "ERROR: backing file 'sub/b.raw' is not reachable: No such file or directory" \
  "missing backing: the resolved path is named"
mv sub/b.gone sub/b.raw

# The library's own refusal: the image file is the backing file.
ac create -b b.raw -i b.raw sub/same.add-cow 2>/dev/null
if [ -f sub/same.add-cow ]; then
  run 2 "image file = backing file" ac check sub/same.add-cow
  out_has "ERROR: the image does not open: addcow_open:" "same file: the library's message"
else
  # create refused it: build it from another image's header
  ac create -b b.raw sub/same.add-cow || fail "setup: same"
  patch sub/same.add-cow 1036 1024 0
  printf 'b.raw' | dd of=sub/same.add-cow bs=1 seek=1036 conv=notrunc status=none
  run 2 "image file = backing file" ac check sub/same.add-cow
  out_has "ERROR: the image does not open: addcow_open:" "same file: the library's message"
fi

# Several findings: the worst decides.
fresh c
poke c.add-cow 2069 fe
rm c.raw
run 2 "stray bits and a missing image file" ac check c.add-cow
out_has "1 errors were found" "mixed: one error"
out_has "1 harmless issues were found" "mixed: one harmless issue"

# ---- not completed (1) --------------------------------------------------------------------------
fresh c
cp c.add-cow m.add-cow
poke m.add-cow 0 00
run 1 "bad magic" ac check m.add-cow
err_is_error check "bad magic"
err_has "is not an add-cow image" "bad magic: says so"
cp c.add-cow v.add-cow
poke v.add-cow 8 00000002
run 1 "version 2" ac check v.add-cow
err_has "add-cow version 2 is not supported" "version 2: says so"
run 1 "missing file" ac check nothing.add-cow
err_has "'nothing.add-cow': No such file or directory" "missing file: says so"
mkdir d.add-cow
run 1 "a directory" ac check d.add-cow
err_has "not a regular file" "directory: says so"
: >e.add-cow
run 1 "an empty file" ac check e.add-cow

# In use: -r needs the image to itself; a plain check only reads.
fresh c
poke c.add-cow 2069 fe
cp c.add-cow c.copy
if hold c.add-cow rw; then
  run 1 "check -r while a writer has the image" ac check -r c.add-cow
  err_has "in use" "in use: the library's message"
  same_file c.add-cow c.copy "in use: -r changed nothing"
  run 1 "check while a writer has the image" ac check c.add-cow
  err_has "in use" "check while a writer has it: the library's message"
  release
else
  fail "hold-image c.add-cow rw"
fi
if hold c.add-cow ro; then
  run 1 "check -r while a reader has the image" ac check -r c.add-cow
  run 3 "check while a reader has the image" ac check c.add-cow
  release
else
  fail "hold-image c.add-cow ro"
fi

finish
