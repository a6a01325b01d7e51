#!/bin/sh
# Configure (once) and build ferry in the source tree.  Extra arguments go
# to configure, e.g. scripts/build.sh --enable-werror.
set -eu
cd "$(dirname "$0")/.."
if [ ! -x configure ] || [ configure.ac -nt configure ] || [ ! -f build-aux/tap-driver.sh ]; then
    ./autogen.sh
fi
if [ ! -f Makefile ] || [ configure -nt config.status ] || [ $# -gt 0 ]; then
    ./configure "$@"
fi
make -j"$(nproc)"
