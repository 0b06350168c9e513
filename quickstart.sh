#!/bin/sh
# quickstart.sh: the README's first command.
#
# Installs the build dependencies (Debian/Ubuntu, with apt-get, only those
# missing), builds libaddcow, installs it (default prefix /usr/local, or
# $PREFIX), then builds the demo against the *installed* library with
# pkg-config and runs it.
#
# Environment: PREFIX (install prefix), CONFIGURE_FLAGS (extra configure
# flags).  Under CI (CI set), warnings are errors.
set -eu
cd "$(dirname "$0")"

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
PREFIX=${PREFIX:-/usr/local}

# python3: the Python binding and the tool tests (they parse addcow's JSON
# output); qemu-utils: qemu-img and qemu-io for the interop tests and the
# benchmark's peer cases; nbdkit, nbdkit-plugin-dev: the nbdkit plugin;
# libnbd-bin, python3-libnbd: nbdinfo and libnbd, clients in its tests;
# abigail-tools: the ABI guard (make check-abi); mandoc: the man pages are
# linted with it.  The tests that need one of these skip where it is absent.
deps="autoconf automake libtool pkg-config make gcc g++ libcmocka-dev liburing-dev python3 qemu-utils nbdkit nbdkit-plugin-dev libnbd-bin python3-libnbd abigail-tools mandoc"
missing=
for p in $deps; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "== installing build dependencies:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

echo "== building"
[ -x configure ] || autoreconf -fi
flags=${CONFIGURE_FLAGS:-}
[ -z "${CI:-}" ] || flags="$flags --enable-werror"
[ -f Makefile ] || ./configure --prefix="$PREFIX" $flags
make -j"$(nproc 2>/dev/null || echo 2)"

echo "== installing into $PREFIX"
$SUDO make install >/dev/null
[ "$(uname -s)" != Linux ] || $SUDO ldconfig 2>/dev/null || true

echo "== building the demo against the installed library (pkg-config addcow)"
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -o "$work/demo" examples/demo.c $(pkg-config --cflags --libs addcow) -Wl,-rpath,"$PREFIX/lib"
echo "== running the demo"
(cd "$work" && ./demo)
