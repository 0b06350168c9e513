#!/bin/sh
# Lints the manual pages: every page of man/, the tool's tools/addcow.1
# and the nbdkit plugin's plugins/nbdkit/nbdkit-addcow-plugin.1
# go through `mandoc -T lint -W warning`, and any message (warning, error,
# unsupported) fails.  Alias pages (".so man3/PAGE.3") are linted through
# a man3/ folder, so that mandoc follows them to their page.  Then, for
# every call declared ADDCOW_API in include/addcow.h, the SYNOPSIS of its
# page (rendered, so roff fonts and escapes are gone) must show the
# prototype exactly as the header declares it, spacing aside; and every
# page's .TH must name the library's version (major.minor).  Where groff
# is installed, `groff -man -ww` must format every page without a warning.
# Exits 77 (skipped) when mandoc is not installed.
set -u
: "${srcdir:=.}" "${top_srcdir:=..}"
srcdir=$(cd "$srcdir" && pwd) || exit 99
top_srcdir=$(cd "$top_srcdir" && pwd) || exit 99
LC_ALL=C
export LC_ALL

if ! command -v mandoc >/dev/null 2>&1; then
  echo "# mandoc not found: manual pages not linted"
  exit 77
fi

pages=${MAN3_PAGES:-$(cd "$srcdir" && ls *.3)}
header=$top_srcdir/include/addcow.h
tool_page=$top_srcdir/tools/addcow.1
failed=0
n=0

T=$(mktemp -d "${TMPDIR:-/tmp}/addcow-man.XXXXXX") || exit 99
trap 'rm -rf "$T"' EXIT
ln -s "$srcdir" "$T/man3"
ln -s "$(dirname "$tool_page")" "$T/man1"

ok() { n=$((n + 1)); echo "ok $n - $1"; }
notok() { n=$((n + 1)); failed=1; echo "not ok $n - $1"; }

# 1. mandoc lint, from $T so that ".so man3/X.3" resolves.  An alias page
# must be exactly one line, ".so man3/PAGE.3", naming a real page of this
# folder; mandoc's one remark on it, ".so is fragile, better use ln(1)", is
# the price of aliases that work in every man(1) without install-time
# links (the Linux man-pages project does the same), so only that exact
# message is allowed, and only there.  Any other message fails.
for p in $pages; do
  [ -f "$srcdir/$p" ] || { notok "$p: no such page"; continue; }
  out=$(cd "$T" && mandoc -T lint -W warning "man3/$p" 2>&1)
  rc=$?
  if grep -q '^\.so' "$srcdir/$p"; then
    target=$(sed -n '1s|^\.so man3/\([a-z_]*\.3\)$|\1|p' "$srcdir/$p")
    if [ "$(wc -l <"$srcdir/$p")" -ne 1 ] || [ -z "$target" ]; then
      notok "$p: an alias page must be the one line '.so man3/PAGE.3'"; continue
    fi
    if [ ! -f "$srcdir/$target" ] || grep -q '^\.so' "$srcdir/$target"; then
      notok "$p: alias of '$target', which is not a page of man/"; continue
    fi
    fragile="mandoc: man3/$p:1:2: WARNING: .so is fragile, better use ln(1): so man3/$target"
    rest=$(printf '%s\n' "$out" | grep -vxF -- "$fragile")
    if [ -z "$rest" ]; then ok "mandoc lint $p (alias of $target)"
    else notok "mandoc lint $p (exit $rc)"; echo "$rest" | sed 's/^/#   /'; fi
    continue
  fi
  if [ $rc -eq 0 ] && [ -z "$out" ]; then ok "mandoc lint $p"
  else notok "mandoc lint $p (exit $rc)"; echo "$out" | sed 's/^/#   /'; fi
done
if [ -f "$tool_page" ]; then
  out=$(cd "$T" && mandoc -T lint -W warning man1/addcow.1 2>&1)
  rc=$?
  if [ $rc -eq 0 ] && [ -z "$out" ]; then ok "mandoc lint tools/addcow.1"
  else notok "mandoc lint tools/addcow.1 (exit $rc)"; echo "$out" | sed 's/^/#   /'; fi
else
  notok "tools/addcow.1 is missing"
fi
plugin_page=$top_srcdir/plugins/nbdkit/nbdkit-addcow-plugin.1
if [ -f "$plugin_page" ]; then
  out=$(mandoc -T lint -W warning "$plugin_page" 2>&1)
  rc=$?
  if [ $rc -eq 0 ] && [ -z "$out" ]; then ok "mandoc lint plugins/nbdkit/nbdkit-addcow-plugin.1"
  else notok "mandoc lint plugins/nbdkit/nbdkit-addcow-plugin.1 (exit $rc)"; echo "$out" | sed 's/^/#   /'; fi
  if command -v groff >/dev/null 2>&1; then
    out=$(groff -man -ww -z "$plugin_page" 2>&1)
    if [ -z "$out" ]; then ok "groff -ww plugins/nbdkit/nbdkit-addcow-plugin.1"
    else notok "groff -ww plugins/nbdkit/nbdkit-addcow-plugin.1"; echo "$out" | sed 's/^/#   /'; fi
  fi
else
  notok "plugins/nbdkit/nbdkit-addcow-plugin.1 is missing"
fi

# groff too, where it is installed: it formats what man(1) shows, and
# warns (-ww) about roff that mandoc lets pass.  Alias pages through their
# page.
if command -v groff >/dev/null 2>&1; then
  for p in $pages; do
    [ -f "$srcdir/$p" ] || continue
    out=$(cd "$T" && groff -man -ww -z "man3/$p" 2>&1)
    if [ -z "$out" ]; then ok "groff -man -ww $p"
    else notok "groff -man -ww $p"; echo "$out" | sed 's/^/#   /'; fi
  done
else
  echo "# groff not found: pages checked with mandoc only"
fi

# 2. Prototypes.  One line per ADDCOW_API declaration, without the macro
# and comments, with single spaces and none inside parentheses.
normalize() {
  tr '\n\t' '  ' | tr -s ' ' | sed -e 's/( /(/g' -e 's/ )/)/g' -e 's/ ,/,/g' -e 's/ ;/;/g'
}
awk '/^ADDCOW_API/ { on = 1; buf = "" }
     on { line = $0; gsub(/\/\*.*\*\//, "", line); buf = buf " " line
          if (line ~ /;/) { print buf; on = 0 } }' "$header" |
  sed -e 's/ADDCOW_API//' >"$T/protos"
[ -s "$T/protos" ] || { notok "no ADDCOW_API declaration found in $header"; exit 1; }

# The SYNOPSIS of a page, as text: overstrikes removed, one line.
synopsis() {
  (cd "$T" && mandoc -T ascii -O width=400 "man3/$1") |
    sed -e 's/.\x08//g' |
    awk '/^[A-Z]/ { on = ($0 == "SYNOPSIS") ; next } on' | normalize
}

while IFS= read -r proto; do
  proto=$(printf '%s\n' "$proto" | normalize | sed -e 's/^ //' -e 's/ $//')
  name=$(printf '%s\n' "$proto" | sed -n 's/.*[ *]\(addcow_[a-z_]*\)(.*/\1/p')
  if [ -z "$name" ]; then notok "cannot parse the declaration '$proto'"; continue; fi
  if [ ! -f "$srcdir/$name.3" ]; then notok "$name: no page $name.3"; continue; fi
  if synopsis "$name.3" | grep -qF -- "$proto"; then ok "$name.3: SYNOPSIS shows '$proto'"
  else notok "$name.3: SYNOPSIS does not show '$proto'"; fi
done <"$T/protos"

# 3. The version in each page's .TH line (alias pages have none).
if [ -n "${PACKAGE_VERSION:-}" ]; then
  want="libaddcow $(echo "$PACKAGE_VERSION" | cut -d. -f1,2)"
  for p in $pages "../tools/addcow.1"; do
    f=$srcdir/$p
    [ -f "$f" ] || continue
    grep -q '^\.so ' "$f" && continue
    if grep '^\.TH ' "$f" | grep -qF "\"$want\""; then ok "$p: .TH says $want"
    else notok "$p: .TH does not say \"$want\": $(grep '^\.TH ' "$f")"; fi
  done
fi

echo "1..$n"
exit $failed
