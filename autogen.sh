#!/bin/sh
# Regenerate the build system: ./autogen.sh && ./configure && make
set -e
cd "$(dirname "$0")"
mkdir -p build-aux m4
autoreconf -fi
# automake does not install its TAP driver by itself; the GTest programs use it.
cp -f "$(automake --print-libdir)/tap-driver.sh" build-aux/tap-driver.sh
