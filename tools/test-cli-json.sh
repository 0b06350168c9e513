#!/bin/sh
# addcow info --output=json and map --output=json: valid JSON (parsed with
# Python's json module), with the values the writes must have made, also
# for file names with quotes, backslashes, control characters and bytes that
# are not UTF-8.  Skipped (77) without python3.
. "${srcdir:-.}/testlib.sh"

command -v python3 >/dev/null 2>&1 || { echo "# python3 not found: skipped"; exit 77; }

# pycheck DESC FILE PYTHON: runs PYTHON with d = the JSON in FILE; it passes
# when the JSON parses and every assert holds.
pycheck() {
  _desc=$1 _file=$2
  if python3 - "$_file" >"$T/py.out" 2>&1 <<EOP
import json, sys
with open(sys.argv[1], 'rb') as f:
    raw = f.read()
d = json.loads(raw.decode('utf-8'))
$3
EOP
  then pass "$_desc"
  else fail "$_desc"; sed 's/^/#   /' "$T/py.out" | tail -5; sed 's/^/#   json: /' "$_file" | head -20
  fi
}

fill base.raw 65536 0x11
mkdir sub
ac create -b ../base.raw sub/vm.add-cow 96K || fail "setup: create"
ac write -q -P 0xab sub/vm.add-cow 4096 8192 || fail "setup: write 1"
ac write -q -P 7 sub/vm.add-cow 1000 10 || fail "setup: write 2"
ac write -q -P 9 sub/vm.add-cow 70000 100 || fail "setup: write 3"

run 0 "info --output=json" ac info --output=json sub/vm.add-cow
err_empty "info json: nothing on stderr"
cp "$T/out" info.json
pycheck "info json: the top-level values" info.json '
assert d["filename"] == "sub/vm.add-cow", d["filename"]
assert d["format"] == "add-cow"
assert d["virtual-size"] == 98304
assert d["allocated-bytes"] == 9216
assert d["image-filename"] == "vm.raw"
assert d["full-image-filename"] == "sub/vm.raw"
assert d["backing-filename"] == "../base.raw"
assert d["full-backing-filename"] == "sub/../base.raw"
assert d["backing-filename-format"] == "raw"
'
pycheck "info json: the chain" info.json '
c = d["chain"]
assert len(c) == 2, c
assert c[0]["filename"] == "sub/vm.add-cow" and c[0]["format"] == "add-cow"
assert c[0]["virtual-size"] == 98304 and c[0]["allocated-bytes"] == 9216
assert c[0]["full-backing-filename"] == "sub/../base.raw"
assert c[1] == {"filename": "sub/../base.raw", "format": "raw", "virtual-size": 65536}, c[1]
'

run 0 "map --output=json" ac map --output=json sub/vm.add-cow
err_empty "map json: nothing on stderr"
cp "$T/out" map.json
pycheck "map json: qemu-img map shape and values" map.json '
def data(s, l, depth): return {"start": s, "length": l, "depth": depth, "present": True,
                               "zero": False, "data": True, "offset": s}
def zero(s, l, depth): return {"start": s, "length": l, "depth": depth, "present": False,
                               "zero": True, "data": False}
want = [data(0, 512, 1), data(512, 512, 0), data(1024, 3072, 1), data(4096, 8192, 0),
        data(12288, 53248, 1), zero(65536, 4096, 0), data(69632, 512, 0), zero(70144, 28160, 0)]
assert d == want, d
'

# A chain of three.
ac create -b sub/vm.add-cow top.add-cow || fail "setup: create top"
ac write -q -P 1 top.add-cow 65536 512 || fail "setup: top write"
run 0 "info json on a chain" ac info --output=json top.add-cow
cp "$T/out" chain.json
pycheck "info json on a chain: three levels" chain.json '
assert d["backing-filename-format"] == "add-cow"
assert [l["format"] for l in d["chain"]] == ["add-cow", "add-cow", "raw"]
assert [l["filename"] for l in d["chain"]] == ["top.add-cow", "sub/vm.add-cow", "sub/../base.raw"]
assert d["chain"][1]["full-image-filename"] == "sub/vm.raw"
'
run 0 "map json on a chain" ac map --output=json top.add-cow
cp "$T/out" chainmap.json
pycheck "map json on a chain: runs cover the disk in order, depths 0..2" chainmap.json '
pos = 0
for e in d:
    assert e["start"] == pos, e
    assert e["length"] > 0
    assert e["data"] == ("offset" in e)
    pos += e["length"]
assert pos == 98304
assert sorted(set(e["depth"] for e in d)) == [0, 1, 2]
assert {"start": 65536, "length": 512, "depth": 0, "present": True, "zero": False,
        "data": True, "offset": 65536} in d
'

# No backing file; an empty disk.
ac create nb.add-cow 1M || fail "setup: nb"
run 0 "info json without backing" ac info --output=json nb.add-cow
cp "$T/out" nb.json
pycheck "info json without backing: nulls" nb.json '
assert d["backing-filename"] is None and d["full-backing-filename"] is None
assert d["backing-filename-format"] is None
assert len(d["chain"]) == 1
'
ac create empty.add-cow 0 || fail "setup: empty"
run 0 "map json of an empty disk" ac map --output=json empty.add-cow
cp "$T/out" empty.json
pycheck "map json of an empty disk: []" empty.json 'assert d == []'

# Awkward names: quote, backslash, tab, newline, a byte that is not UTF-8.
img=$(printf 'we"ird\\na\tme\nx.raw')
bk=$(printf 'ba\351se.raw')
cp base.raw "$bk"
ac create -b "$bk" -i "$img" odd.add-cow || fail "setup: odd names"
run 0 "info json with awkward names" ac info --output=json odd.add-cow
cp "$T/out" odd.json
pycheck "info json with awkward names: escaped, valid" odd.json '
assert d["image-filename"] == "we\"ird\\na\tme\nx.raw", repr(d["image-filename"])
assert d["backing-filename"] == "ba\ufffdse.raw", repr(d["backing-filename"])
'

finish
