#!/bin/sh
# addcow info and map (human output): sizes, paths as stored and as
# resolved, the chain, and the runs, against what the writes must have
# made (worked out by hand from FORMAT.md: 512-byte sectors); and the
# errors.  The JSON output is tested in test-cli-json.sh.
. "${srcdir:-.}/testlib.sh"

# base.raw: 64 KiB of 0x11.  sub/vm.add-cow: 96 KiB over ../base.raw.
fill base.raw 65536 0x11
mkdir sub
ac create -b ../base.raw sub/vm.add-cow 96K || fail "setup: create"
ac write -q -P 0xab sub/vm.add-cow 4096 8192 || fail "setup: write 1"  # sectors 8..23
ac write -q -P 7 sub/vm.add-cow 1000 10 || fail "setup: write 2"       # sector 1
ac write -q -P 9 sub/vm.add-cow 70000 100 || fail "setup: write 3"     # sector 136

run 0 "info" ac info sub/vm.add-cow
err_empty "info: nothing on stderr"
out_has "image: sub/vm.add-cow" "info: the image"
out_has "file format: add-cow" "info: the format"
out_has "virtual size: 96 KiB (98304 bytes)" "info: virtual size"
out_has "allocated: 9 KiB (9216 bytes)" "info: allocated bytes = 18 sectors"
out_has "image file: vm.raw" "info: image file as stored"
out_has "image file (resolved): sub/vm.raw" "info: image file as resolved"
out_has "backing file: ../base.raw" "info: backing file as stored"
out_has "backing file (resolved): sub/../base.raw" "info: backing file as resolved"
out_has "backing file format: raw" "info: backing format"
out_has "  0: sub/vm.add-cow (add-cow, 98304 bytes, 9216 allocated, image file sub/vm.raw)" \
  "info: chain level 0"
out_has "  1: sub/../base.raw (raw, 65536 bytes)" "info: chain level 1"
out_lacks "  2: " "info: chain of two"

run 0 "info --output=human" ac info --output=human sub/vm.add-cow
out_has "virtual size: 96 KiB (98304 bytes)" "--output=human is the default"

cat >map.want <<'EOM'
0 512 1 backing sub/../base.raw
512 512 0 allocated sub/vm.raw
1024 3072 1 backing sub/../base.raw
4096 8192 0 allocated sub/vm.raw
12288 53248 1 backing sub/../base.raw
65536 4096 0 zero -
69632 512 0 allocated sub/vm.raw
70144 28160 0 zero -
EOM
run 0 "map" ac map sub/vm.add-cow
err_empty "map: nothing on stderr"
if head -1 "$T/out" | grep -q '^Start  *Length  *Depth  *Status  *File$'; then
  pass "map: header line"
else
  fail "map: header line is '$(head -1 "$T/out")'"
fi
sed 1d "$T/out" | awk '{print $1, $2, $3, $4, $5}' >map.got
same_file map.got map.want "map: the runs, merged, covering the disk"
run 0 "map --output=human" ac map --output=human sub/vm.add-cow
sed 1d "$T/out" | awk '{print $1, $2, $3, $4, $5}' >map.got
same_file map.got map.want "map --output=human is the default"

# A chain: top.add-cow over sub/vm.add-cow over base.raw.
ac create -b sub/vm.add-cow top.add-cow || fail "setup: create top"
ac write -q -P 1 top.add-cow 0 512 || fail "setup: top write 1"
ac write -q -P 1 top.add-cow 65536 512 || fail "setup: top write 2"
run 0 "info on a chain" ac info top.add-cow
out_has "backing file: sub/vm.add-cow" "chain: backing as stored"
out_has "backing file format: add-cow" "chain: backing format add-cow"
out_has "  0: top.add-cow (add-cow, 98304 bytes, 1024 allocated, image file top.raw)" "chain: level 0"
out_has "  1: sub/vm.add-cow (add-cow, 98304 bytes, 9216 allocated, image file sub/vm.raw)" \
  "chain: level 1, its image file resolved against its own folder"
out_has "  2: sub/../base.raw (raw, 65536 bytes)" "chain: level 2"

cat >map.want <<'EOM'
0 512 0 allocated top.raw
512 512 1 backing sub/vm.raw
1024 3072 2 backing sub/../base.raw
4096 8192 1 backing sub/vm.raw
12288 53248 2 backing sub/../base.raw
65536 512 0 allocated top.raw
66048 3584 1 zero -
69632 512 1 backing sub/vm.raw
70144 28160 1 zero -
EOM
map_lines top.add-cow >map.got
same_file map.got map.want "map of a chain: depth of every run"

# No backing file.
ac create nb.add-cow 1M || fail "setup: create nb"
run 0 "info without backing" ac info nb.add-cow
out_has "backing file: none" "no backing: says none"
out_has "allocated: 0 B (0 bytes)" "no backing: nothing allocated"
out_lacks "  1: " "no backing: chain of one"
echo "0 1048576 0 zero -" >map.want
map_lines nb.add-cow >map.got
same_file map.got map.want "map without backing: one zero run"

# Empty disk.
ac create empty.add-cow 0 || fail "setup: create empty"
run 0 "map of an empty disk" ac map empty.add-cow
eq "$(wc -l <"$T/out" | tr -d ' ')" 1 "empty disk: header line only"

# ---- errors -----------------------------------------------------------------

for c in info map; do
  run 1 "$c of a missing file" ac "$c" missing.add-cow
  err_is_error "$c" "$c missing"
  err_has "missing.add-cow" "$c missing: names the file"
  out_empty "$c missing: nothing on stdout"

  run 1 "$c of a raw file" ac "$c" base.raw
  err_is_error "$c" "$c raw file"

  run 1 "$c --output=xml" ac "$c" --output=xml sub/vm.add-cow
  err_has "'xml'" "$c --output=xml: names the value"
  out_empty "$c --output=xml: nothing on stdout"
done

mv base.raw base.moved
for c in info map; do
  run 1 "$c with the backing file gone" ac "$c" sub/vm.add-cow
  err_is_error "$c" "$c backing gone"
  err_has "sub/../base.raw" "$c backing gone: names the resolved backing path"
done
mv base.moved base.raw

# A reader shares the image with readers, not with a writer.
if hold sub/vm.add-cow ro; then
  run 0 "info while another reader has the image" ac info sub/vm.add-cow
  release
else
  fail "hold-image sub/vm.add-cow ro"
fi
if hold sub/vm.add-cow rw; then
  run 1 "map while a writer has the image" ac map sub/vm.add-cow
  err_is_error map "map while in use"
  err_has "in use" "map while in use: the library says why"
  release
else
  fail "hold-image sub/vm.add-cow rw"
fi

finish
