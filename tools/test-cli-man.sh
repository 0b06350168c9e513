#!/bin/sh
# The man page addcow.1: every command of `addcow --help` has its entry
# (synopsis and COMMANDS), every option of every command's --help is
# documented, check's exit codes 0-3 are there, and groff formats it
# without a warning (when groff is installed).
. "${srcdir:-.}/testlib.sh"

man1=$srcdir/addcow.1
[ -f "$man1" ] || { fail "no $man1"; finish; }
# The page as text, roff escapes for '-' undone.
sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' "$man1" >page.txt

cmds=$(ac --help | sed -n 's/^  \([a-z]*\) .*/\1/p')
[ -n "$cmds" ] && pass "--help lists commands" || fail "--help lists no command"
for c in $cmds; do
  if grep -q "^\.B addcow $c" page.txt; then pass "man: $c in the synopsis"
  else fail "man: $c not in the synopsis"; fi
  if grep -q "^\.B $c\b" page.txt; then pass "man: $c has an entry"
  else fail "man: $c has no entry under COMMANDS"; fi
  # Every option its --help shows.
  for o in $(ac "$c" --help | sed -n '1s/^Usage: addcow //p' | grep -oE -- '--?[a-zA-Z][a-z-]*' | sort -u); do
    if grep -qF -- "$o" page.txt; then pass "man: $c $o documented"
    else fail "man: $c $o not in the page"; fi
  done
done
for code in 0 1 2 3; do
  if grep -q "^\.B $code\$" page.txt; then pass "man: check's exit code $code"
  else fail "man: check's exit code $code missing"; fi
done

if command -v groff >/dev/null 2>&1; then
  groff -man -ww -z "$man1" >groff.out 2>&1
  if [ -s groff.out ]; then fail "groff warnings: $(head -3 groff.out)"
  else pass "groff -man -ww: no warnings"; fi
else
  echo "# groff not found: formatting not checked"
fi

finish
