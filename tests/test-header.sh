#!/bin/sh
# Header hygiene: include/addcow.h compiles alone, as strict C99 with
# -pedantic, as C11, and as C++, with warnings as errors.
set -e
: "${CC:=cc}" "${CXX:=c++}" "${top_srcdir:=..}"
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
printf '#include <addcow.h>\nint main(void) { return addcow_probe(0, 0); }\n' > "$d/t.c"
for std in c99 c11; do
  echo "# $CC -std=$std -pedantic"
  $CC -std=$std -pedantic -Wall -Wextra -Werror -I"$top_srcdir/include" -c "$d/t.c" -o "$d/t.o"
done
# The header twice (include guard) and before any system header.
printf '#include <addcow.h>\n#include <addcow.h>\nstatic addcow_image *p;\nint main(void) { (void)p; return 0; }\n' > "$d/t2.c"
$CC -std=c99 -pedantic -Werror -I"$top_srcdir/include" -c "$d/t2.c" -o "$d/t2.o"
if command -v "$CXX" >/dev/null 2>&1 && "$CXX" --version >/dev/null 2>&1; then
  printf '#include <addcow.h>\nint main() { addcow_image *i = 0; (void)i; return addcow_probe(nullptr, 0); }\n' > "$d/t.cc"
  echo "# $CXX -std=c++11 -pedantic"
  $CXX -std=c++11 -pedantic -Wall -Wextra -Werror -I"$top_srcdir/include" -c "$d/t.cc" -o "$d/t3.o"
else
  echo "# no C++ compiler: C++ check skipped"; exit 77
fi
# Only fixed-width types in the API: no off_t, no enum, no long.
if grep -nE '\b(off_t|enum|long|ssize_t)\b' "$top_srcdir/include/addcow.h" | grep -v '^\s*\*' | grep -vE '^[0-9]+:\s*(/\*|\*)'; then
  echo "addcow.h uses a type whose size varies"; exit 1
fi
echo "header ok"
