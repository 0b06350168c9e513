#!/bin/sh
# addcow: --help, help, --version, and the usage errors every command
# shares (unknown option, wrong number of arguments): exit codes, and where
# the text goes.
. "${srcdir:-.}/testlib.sh"

cmds="create info map check hydrate detach commit convert resize read write"

run 0 "addcow --help" ac --help
for c in $cmds; do
  out_has "  $c " "--help lists $c"
done
err_empty "--help writes nothing on stderr"

run 0 "addcow -h" ac -h
out_has "Usage: addcow COMMAND" "-h is --help"

run 0 "addcow help" ac help
out_has "Usage: addcow COMMAND" "help alone is --help"

run 0 "addcow --version" ac --version
if grep -qE '^addcow [0-9]+\.[0-9]+\.[0-9]+ \(library [0-9]+\.[0-9]+\.[0-9]+\)$' "$T/out"; then
  pass "--version prints the tool's and the library's versions"
else
  fail "--version output: $(cat "$T/out")"
fi

run 1 "addcow with no command" ac
err_has "no command given" "no command: says so"
out_empty "no command: nothing on stdout"

run 1 "unknown command" ac frobnicate x
err_has "addcow: unknown command 'frobnicate'" "unknown command: named"

run 1 "help for an unknown command" ac help frobnicate
err_has "unknown command 'frobnicate'" "help frobnicate: named"

for c in $cmds; do
  run 0 "$c --help" ac "$c" --help
  if head -1 "$T/out" | grep -q "^Usage: addcow $c "; then
    pass "$c --help starts with its usage line"
  else
    fail "$c --help first line: $(head -1 "$T/out")"
  fi
  err_empty "$c --help: nothing on stderr"
  cp "$T/out" "$T/help.$c"

  run 0 "$c -h" ac "$c" -h
  same_file "$T/out" "$T/help.$c" "$c -h is $c --help"
  run 0 "help $c" ac help "$c"
  same_file "$T/out" "$T/help.$c" "help $c is $c --help"

  run 1 "$c --bogus" ac "$c" --bogus x.add-cow
  err_is_error "$c" "$c --bogus"
  err_has "unknown option '--bogus'" "$c --bogus: names the option"
  err_has "Try 'addcow $c --help'." "$c --bogus: points to --help"
  out_empty "$c --bogus: nothing on stdout"

  run 1 "$c -Z" ac "$c" -Z x.add-cow
  err_has "unknown option '-Z'" "$c -Z: names the option"

  # No arguments at all, and one too many.
  run 1 "$c without arguments" ac "$c"
  err_is_error "$c" "$c without arguments"
  out_empty "$c without arguments: nothing on stdout"
  run 1 "$c with too many arguments" ac "$c" a b c d e
  err_is_error "$c" "$c with too many arguments"
done

# Options that need a value.
run 1 "create -b without a value" ac create -b
err_has "option '-b' needs a value" "create -b: missing value named"
run 1 "info --output without a value" ac info --output
err_has "option '--output' needs a value" "info --output: missing value named"
run 1 "read -P without a value" ac read -P
err_has "option '-P' needs a value" "read -P: missing value named"

# No file was made by any of this.
eq "$(ls "$T" | grep -v -e '^out$' -e '^err$' -e '^help\.' | wc -l | tr -d ' ')" 0 \
  "usage errors create no file"

finish
