# testlib.sh: sourced by tools/test-cli-*.sh.
#
# Each script works in a scratch folder ($T, removed at exit unless
# AC_KEEP_SCRATCH=1), runs the tool through `ac` (under valgrind when
# ADDCOW_VALGRIND is set), prints one "ok"/"not ok" line per assertion and
# exits 1 if any failed.  Expected bytes are built with dd, head and tr,
# never with the tool itself.

set -u
: "${srcdir:=.}"
if [ -z "${ADDCOW:-}" ]; then
  ADDCOW=$(cd "$(dirname "$0")" && pwd)/addcow
fi
: "${HOLD_IMAGE:=$(dirname "$ADDCOW")/hold-image}"
: "${ADDCOW_VALGRIND:=}"
LC_ALL=C
export LC_ALL

T=$(mktemp -d "${TMPDIR:-/tmp}/addcow-cli.XXXXXX") || exit 99
if [ "${AC_KEEP_SCRATCH:-0}" = 1 ]; then
  echo "# scratch folder: $T"
else
  trap 'cd /; rm -rf "$T"' EXIT
fi
cd "$T" || exit 99

tests_run=0
tests_failed=0

# The tool.  (A function, so that a test can run it under a pty too.)
ac() {
  $ADDCOW_VALGRIND "$ADDCOW" "$@"
}

pass() {
  tests_run=$((tests_run + 1))
  echo "ok $tests_run - $1"
}

fail() {
  tests_run=$((tests_run + 1))
  tests_failed=$((tests_failed + 1))
  echo "not ok $tests_run - $1"
}

# run RC DESC CMD...: runs CMD with stdout in $T/out and stderr in $T/err
# and checks its exit status.
run() {
  _want=$1 _desc=$2
  shift 2
  "$@" >"$T/out" 2>"$T/err"
  _rc=$?
  if [ "$_rc" = "$_want" ]; then
    pass "$_desc (exit $_rc)"
  else
    fail "$_desc: exit $_rc, expected $_want"
    sed 's/^/#   stdout: /' "$T/out" | head -20
    sed 's/^/#   stderr: /' "$T/err" | head -20
  fi
}

# The output of the last run: assertions on it.
out_has() {       # out_has FIXED-STRING DESC
  if grep -qF -- "$1" "$T/out"; then pass "$2"; else
    fail "$2: stdout lacks '$1'"; sed 's/^/#   stdout: /' "$T/out" | head -20; fi
}
out_lacks() {
  if grep -qF -- "$1" "$T/out"; then fail "$2: stdout has '$1'"; else pass "$2"; fi
}
err_has() {
  if grep -qF -- "$1" "$T/err"; then pass "$2"; else
    fail "$2: stderr lacks '$1'"; sed 's/^/#   stderr: /' "$T/err" | head -20; fi
}
err_empty() {
  if [ -s "$T/err" ]; then fail "$1: stderr not empty"; sed 's/^/#   stderr: /' "$T/err" | head -5
  else pass "$1"; fi
}
out_empty() {
  if [ -s "$T/out" ]; then fail "$1: stdout not empty"; sed 's/^/#   stdout: /' "$T/out" | head -5
  else pass "$1"; fi
}
# The first line of stderr is "addcow: CMD: ..." (and nothing on stdout).
err_is_error() {  # err_is_error CMD DESC
  if head -1 "$T/err" | grep -q "^addcow: $1: ."; then pass "$2: message on stderr"; else
    fail "$2: stderr does not start with 'addcow: $1: '"; sed 's/^/#   stderr: /' "$T/err" | head -5; fi
}

eq() {            # eq GOT WANT DESC
  if [ "$1" = "$2" ]; then pass "$3"; else fail "$3: got '$1', expected '$2'"; fi
}

same_file() {     # same_file A B DESC
  if cmp "$1" "$2" >/dev/null 2>&1; then pass "$3"; else
    fail "$3: $1 and $2 differ"; cmp "$1" "$2" 2>&1 | sed 's/^/#   /' | head -3; fi
}

size_of() {
  wc -c <"$1" | tr -d ' '
}

# The bytes of FILE at OFF..OFF+LEN-1 as hex, no spaces: hexat FILE OFF LEN
hexat() {
  od -An -v -tx1 -j "$2" -N "$3" "$1" | tr -d ' \n'
}

# hex of N copies of byte (two hex digits): hexrep ab 3 -> ababab
hexrep() {
  _i=0 _s=
  while [ "$_i" -lt "$2" ]; do _s=$_s$1; _i=$((_i + 1)); done
  printf '%s' "$_s"
}

# fill FILE LEN BYTE: a new file of LEN copies of BYTE (0..255, or 0xNN)
fill() {
  head -c "$2" /dev/zero | tr '\0' "\\$(printf '%03o' "$3")" >"$1"
}

# patch FILE OFF LEN BYTE: overwrite LEN bytes at OFF with BYTE (the model)
patch() {
  head -c "$3" /dev/zero | tr '\0' "\\$(printf '%03o' "$4")" |
    dd of="$1" bs=65536 seek="$2" oflag=seek_bytes conv=notrunc status=none
}

# poke FILE OFF HEXBYTES: overwrite bytes at OFF (e.g. poke f 8 00000002)
poke() {
  _h=$3 _e=
  while [ -n "$_h" ]; do
    _e="$_e\\$(printf '%03o' "0x$(printf '%.2s' "$_h")")"
    _h=${_h#??}
  done
  printf "$_e" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# The virtual size from `addcow info` (human).
vsize() {
  ac info "$1" | sed -n 's/^virtual size: .*(\([0-9]*\) bytes)$/\1/p'
}

# The set of lines of `addcow map` without the header line.
map_lines() {
  ac map "$1" | sed 1d | awk '{print $1, $2, $3, $4, $5}'
}

# hold FILE rw|ro: keeps FILE open with hold-image until release().
hold() {
  rm -f "$T/hold.fifo" "$T/hold.out"
  mkfifo "$T/hold.fifo"
  "$HOLD_IMAGE" "$1" "$2" <"$T/hold.fifo" >"$T/hold.out" 2>&1 &
  hold_pid=$!
  exec 9>"$T/hold.fifo"
  _n=0
  while ! grep -q ready "$T/hold.out" 2>/dev/null; do
    _n=$((_n + 1))
    if [ "$_n" -gt 200 ] || ! kill -0 "$hold_pid" 2>/dev/null; then
      echo "# hold-image did not start:"; sed 's/^/#   /' "$T/hold.out"
      return 1
    fi
    sleep 0.05
  done
}
release() {
  exec 9>&-
  wait "$hold_pid"
}

# True if the file system of $T keeps holes in sparse files.
fs_has_holes() {
  dd if=/dev/zero of="$T/holeprobe" bs=1 count=1 seek=16777215 status=none
  _k=$(du -k "$T/holeprobe" | cut -f1)
  rm -f "$T/holeprobe"
  [ "$_k" -lt 1024 ]
}

finish() {
  echo "1..$tests_run"
  if [ "$tests_failed" -gt 0 ]; then
    echo "# $tests_failed of $tests_run checks failed"
    exit 1
  fi
  echo "# all $tests_run checks passed"
  exit 0
}
