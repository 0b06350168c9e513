#!/bin/sh
# The round trip: create over a base, write patterns, hydrate, detach, then
# the raw image file, convert's output and the expected bytes (a model file
# patched with dd) must be the same; commit, then the base alone holds the
# data.  Also: convert leaves holes, -p draws on a terminal (under script(1))
# and nothing elsewhere, and the errors of hydrate, detach, commit, convert.
. "${srcdir:-.}/testlib.sh"

M=1048576
# base.raw, 2 MiB: 1 MiB of 0x11, 512 KiB of zeros, 512 KiB of 0x22.
fill base.raw $M 0x11
head -c $((M / 2)) /dev/zero >>base.raw
fill q $((M / 2)) 0x22
cat q >>base.raw
cp base.raw model

ac create -b base.raw vm.add-cow || fail "setup: create"
wr() {            # wr PATTERN OFF LEN: write through the tool and the model
  ac write -q -P "$1" vm.add-cow "$2" "$3" || fail "write -P $1 $2 $3"
  patch model "$2" "$3" "$1"
}
wr 0xab 4096 65536
wr 0x01 100 7
wr 0xcd 1048000 1000
wr 0x77 $((2 * M - 512)) 512
ac write -q -z vm.add-cow 1572864 4096 || fail "write -z"
patch model 1572864 4096 0

run 0 "read --raw before hydrate" ac read --raw vm.add-cow 0 2M
same_file "$T/out" model "before hydrate: the disk is the model"
run 0 "convert before hydrate" ac convert vm.add-cow conv1.raw
out_empty "convert is quiet"
err_empty "convert: nothing on stderr"
same_file conv1.raw model "convert before hydrate: the model"

# detach needs hydrate first.
cp vm.add-cow vm.before
run 1 "detach before hydrate" ac detach vm.add-cow
err_is_error detach "detach before hydrate"
err_has "hydrate" "detach before hydrate: points to hydrate"
same_file vm.add-cow vm.before "detach before hydrate: nothing changed"

run 0 "hydrate" ac hydrate vm.add-cow
out_empty "hydrate: nothing on stdout"
err_empty "hydrate: nothing on stderr"
echo "0 2097152 0 allocated vm.raw" >map.want
map_lines vm.add-cow >map.got
same_file map.got map.want "after hydrate: one allocated run"
run 0 "hydrate again (nothing left to do)" ac hydrate -p vm.add-cow
err_empty "hydrate -p off a terminal: nothing on stderr"

run 0 "detach" ac detach vm.add-cow
err_empty "detach: nothing on stderr"
eq "$(hexat vm.add-cow 12 1024)" "$(hexrep 00 1024)" "detach: backing_file field cleared"
run 0 "check after detach: a clean image" ac check vm.add-cow
run 0 "info after detach" ac info vm.add-cow
out_has "backing file: none" "info after detach: no backing file"
same_file vm.raw model "after detach: the raw image file is the disk"
run 0 "convert after detach" ac convert vm.add-cow conv2.raw
same_file conv2.raw vm.raw "convert's output = the raw image file"
same_file conv2.raw model "convert's output = the expected bytes"
mv base.raw base.away
run 0 "read without the base" ac read --raw vm.add-cow 0 2M
same_file "$T/out" model "after detach: the base is not needed"
mv base.away base.raw
cp vm.add-cow vm.before
run 0 "detach without a backing file" ac detach vm.add-cow
same_file vm.add-cow vm.before "detach without a backing file: no change"
run 0 "hydrate without a backing file" ac hydrate vm.add-cow
same_file vm.add-cow vm.before "hydrate without a backing file: no change"

# A disk longer than its backing file: the tail stays unallocated zeros.
ac create -b base.raw long.add-cow 3M || fail "setup: long"
run 0 "hydrate a disk longer than the base" ac hydrate long.add-cow
printf '0 2097152 0 allocated long.raw\n2097152 1048576 0 zero -\n' >map.want
map_lines long.add-cow >map.got
same_file map.got map.want "long disk: past the base's end stays unallocated"
run 0 "detach the longer disk" ac detach long.add-cow
cp base.raw longmodel
head -c $M /dev/zero >>longmodel
same_file long.raw longmodel "long disk: image file = base + zeros"

# ---- commit -------------------------------------------------------------------
cp base.raw base2.raw
cp base.raw model2
ac create -b base2.raw o.add-cow || fail "setup: o"
ac write -q -P 0x5a o.add-cow 0 4096 || fail "o: write 1"
patch model2 0 4096 0x5a
ac write -q -P 0x5b o.add-cow 1500000 3000 || fail "o: write 2"
patch model2 1500000 3000 0x5b
run 0 "commit" ac commit o.add-cow
out_empty "commit: nothing on stdout"
err_empty "commit: nothing on stderr"
same_file base2.raw model2 "after commit: the base alone holds the data"
echo "0 2097152 1 backing base2.raw" >map.want
map_lines o.add-cow >map.got
same_file map.got map.want "after commit: nothing allocated in the overlay"
run 0 "check after commit: a clean image" ac check o.add-cow
run 0 "info after commit" ac info o.add-cow
out_has "allocated: 0 B (0 bytes)" "after commit: 0 bytes allocated"
run 0 "read after commit" ac read --raw o.add-cow 0 2M
same_file "$T/out" model2 "after commit: the overlay still reads the same"
run 0 "commit -p off a terminal" ac commit -p o.add-cow
err_empty "commit -p off a terminal: nothing on stderr"
run 1 "commit without a backing file" ac commit vm.add-cow
err_is_error commit "commit without backing"
err_has "no backing file" "commit without backing: says so"

# Commit into an add-cow backing file (a chain).
cp base.raw base3.raw
cp base.raw model3
ac create -b base3.raw mid.add-cow || fail "setup: mid"
ac create -b mid.add-cow top.add-cow || fail "setup: top"
ac write -q -P 0x66 top.add-cow 8192 1024 || fail "top: write"
patch model3 8192 1024 0x66
run 0 "commit into an add-cow image" ac commit top.add-cow
printf '0 8192 1 backing base3.raw\n8192 1024 0 allocated mid.raw\n9216 2087936 1 backing base3.raw\n' >map.want
map_lines mid.add-cow >map.got
same_file map.got map.want "commit into add-cow: the middle image has the sectors"
same_file base3.raw base.raw "commit into add-cow: the raw base untouched"
run 0 "read the middle image" ac read --raw mid.add-cow 0 2M
same_file "$T/out" model3 "commit into add-cow: the middle image reads the data"
run 0 "convert a chain" ac convert top.add-cow conv3.raw
same_file conv3.raw model3 "convert of a chain"

# The backing file in use: commit cannot take it.
ac write -q -P 0x67 top.add-cow 0 512 || fail "top: write 2"
cp mid.add-cow mid.before
if hold mid.add-cow ro; then
  run 1 "commit while the backing file is in use" ac commit top.add-cow
  err_is_error commit "commit, backing in use"
  release
  same_file mid.add-cow mid.before "commit, backing in use: backing unchanged"
  run 0 "the write is still in the top image" ac read -q -P 0x67 top.add-cow 0 512
else
  fail "hold-image mid.add-cow ro"
fi

# ---- convert -------------------------------------------------------------------
ac create sp.add-cow 64M || fail "setup: sp"
ac write -q -P 0x42 sp.add-cow 10M 4K || fail "sp: write"
ac write -q -P 0 sp.add-cow 20M 64K || fail "sp: zero data"
run 0 "convert a sparse disk" ac convert sp.add-cow sp.out
eq "$(size_of sp.out)" 67108864 "convert: output is the virtual size long"
truncate -s 64M spmodel
patch spmodel 10485760 4096 0x42
same_file sp.out spmodel "convert: the bytes"
if fs_has_holes; then
  k=$(du -k sp.out | cut -f1)
  if [ "$k" -le 32 ]; then pass "convert: zero runs and zero blocks are holes ($k KiB used)"
  else fail "convert: $k KiB used for 4 KiB of data"; fi
else
  echo "# the file system keeps no holes: sparseness not checked"
fi

echo keep >exists.raw
run 1 "convert onto an existing file" ac convert sp.add-cow exists.raw
err_is_error convert "existing OUT"
err_has "exists" "existing OUT: says so"
eq "$(cat exists.raw)" keep "existing OUT: untouched"
run 1 "convert a missing image" ac convert nothing.add-cow new.raw
err_has "nothing.add-cow" "missing image: named"
[ ! -e new.raw ] && pass "missing image: no output made" || fail "new.raw made"
run 1 "convert into a missing folder" ac convert sp.add-cow nodir/x.raw
err_is_error convert "missing folder"
run 0 "convert -p off a terminal" ac convert -p sp.add-cow sp2.out
err_empty "convert -p off a terminal: nothing on stderr"

# ---- hydrate errors ------------------------------------------------------------
run 1 "hydrate a missing image" ac hydrate nothing.add-cow
err_is_error hydrate "hydrate missing"
err_has "nothing.add-cow" "hydrate missing: named"
run 1 "detach a missing image" ac detach nothing.add-cow
err_is_error detach "detach missing"
run 1 "commit a missing image" ac commit nothing.add-cow
err_is_error commit "commit missing"
ac create -b base.raw busy.add-cow || fail "setup: busy"
if hold busy.add-cow ro; then
  for c in hydrate detach commit; do
    run 1 "$c while another handle has the image" ac "$c" busy.add-cow
    err_has "in use" "$c while in use: the library says why"
  done
  release
else
  fail "hold-image busy.add-cow ro"
fi

# ---- -p on a terminal ----------------------------------------------------------------
if command -v script >/dev/null 2>&1 && script -qec true /dev/null >/dev/null 2>&1; then
  cp base.raw ttybase.raw
  ac create -b ttybase.raw tty.add-cow || fail "setup: tty"
  ac write -q -P 3 tty.add-cow 0 512 || fail "tty: write"
  for c in "hydrate -p tty.add-cow" "commit -p tty.add-cow" "convert -p tty.add-cow tty.out" \
           "hydrate tty.add-cow"; do
    script -qec "$ADDCOW_VALGRIND '$ADDCOW' $c" /dev/null </dev/null >tty.log 2>&1
    rc=$?
    eq "$rc" 0 "$c on a terminal: exit 0"
    case $c in
      *-p*)
        if grep -q '(100.00/100%)' tty.log; then pass "$c on a terminal: draws (100.00/100%)"
        else fail "$c on a terminal: no progress: $(od -c tty.log | head -3)"; fi;;
      *)
        if grep -q '/100%' tty.log; then fail "$c without -p: progress drawn"
        else pass "$c without -p: no progress on a terminal"; fi;;
    esac
  done
  cp base.raw ttymodel
  patch ttymodel 0 512 3
  same_file tty.out ttymodel "convert -p: the bytes"
else
  echo "# script(1) not usable: the terminal progress is not checked"
fi

finish
