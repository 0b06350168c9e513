#!/bin/sh
# Every name the library exports has a manual page: for each symbol of
# lib/libaddcow.syms and each ADDCOW_API declaration of include/addcow.h
# (the two lists must agree), man/NAME.3 exists and is installed
# (dist_man3_MANS), and the page it is or points to (".so man3/PAGE.3")
# lists NAME in its NAME section, so that man(1) and apropos(1) find it.
# Also: libaddcow(3) refers to every call, every page of the folder is
# installed, and every cross-reference to a libaddcow page (".BR x (3)")
# points to a page that exists.  Needs no tool but a POSIX shell, sed and
# awk.
set -u
: "${srcdir:=.}" "${top_srcdir:=..}"
LC_ALL=C
export LC_ALL

syms=$top_srcdir/lib/libaddcow.syms
header=$top_srcdir/include/addcow.h
pages=${MAN3_PAGES:-$(cd "$srcdir" && ls *.3)}
failed=0
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
notok() { n=$((n + 1)); failed=1; echo "not ok $n - $1"; }

from_syms=$(sed -n 's/^[[:space:]]*\(addcow_[a-z0-9_]*\);.*/\1/p' "$syms" | sort -u)
from_header=$(awk '/^ADDCOW_API/ { on = 1; buf = "" }
                   on { buf = buf " " $0; if ($0 ~ /;/) { print buf; on = 0 } }' "$header" |
              sed -n 's/.*[ *]\(addcow_[a-z0-9_]*\)(.*/\1/p' | sort -u)
[ -n "$from_syms" ] || { notok "no symbol found in $syms"; echo "1..$n"; exit 1; }
if [ "$from_syms" = "$from_header" ]; then
  ok "libaddcow.syms and the header's ADDCOW_API calls agree ($(echo "$from_syms" | wc -l) names)"
else
  notok "libaddcow.syms and the header's ADDCOW_API calls differ:"
  echo "$from_syms" >syms.$$; echo "$from_header" >header.$$
  diff syms.$$ header.$$ | sed 's/^/#   /'; rm -f syms.$$ header.$$
fi

installed() {
  for q in $pages; do [ "$q" = "$1" ] && return 0; done
  return 1
}

# The names in a page's NAME section: the words before "\-", comma-separated.
names_of() {
  awk '/^\.SH/ { on = ($0 ~ /^\.SH "?NAME"?$/); next } on' "$srcdir/$1" |
    tr '\n' ' ' | sed -e 's/\\-.*//' -e 's/,/ /g'
}

for name in $(printf '%s\n%s\n' "$from_syms" "$from_header" | sort -u); do
  p=$name.3
  if [ ! -f "$srcdir/$p" ]; then notok "$name: no page man/$p"; continue; fi
  installed "$p" || { notok "$name: $p is not in dist_man3_MANS"; continue; }
  target=$p
  if grep -q '^\.so' "$srcdir/$p"; then
    target=$(sed -n '1s|^\.so man3/\([a-z_]*\.3\)$|\1|p' "$srcdir/$p")
    if [ -z "$target" ] || [ ! -f "$srcdir/$target" ]; then
      notok "$name: $p is an alias of a page that does not exist: $(head -1 "$srcdir/$p")"
      continue
    fi
    installed "$target" || { notok "$name: $p points to $target, not installed"; continue; }
  fi
  if names_of "$target" | tr ' ' '\n' | grep -qx "$name"; then
    ok "$name: $p$( [ "$target" != "$p" ] && echo " -> $target"), listed in NAME"
  else
    notok "$name: the NAME section of $target does not list $name"
  fi
  if grep -qx "\.BR $name (3)," "$srcdir/libaddcow.3" ||
     grep -qx "\.BR $name (3)" "$srcdir/libaddcow.3"; then
    ok "$name: in the SEE ALSO of libaddcow(3)"
  else
    notok "$name: libaddcow(3) does not refer to it (.BR $name (3))"
  fi
done

# Every page of the folder is installed (a page left out of Makefile.am
# would be neither installed nor distributed).
for f in "$srcdir"/*.3; do
  b=$(basename "$f")
  if installed "$b"; then :; else notok "$b is not in dist_man3_MANS"; fi
done
ok "every page of man/ is in dist_man3_MANS"

# Cross-references to libaddcow's own pages resolve.
for p in $pages; do
  [ -f "$srcdir/$p" ] || continue
  for ref in $(sed -n 's/^\.BR \(\(lib\)\{0,1\}addcow[a-z_]*\) (3).*/\1/p' "$srcdir/$p"); do
    if [ -f "$srcdir/$ref.3" ]; then :; else notok "$p refers to $ref(3), which has no page"; fi
  done
done
ok "cross-references to libaddcow pages resolve"

echo "1..$n"
exit $failed
