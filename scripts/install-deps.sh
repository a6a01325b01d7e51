#!/bin/sh
# Install everything ferry needs to build and test on Debian 12.  Idempotent:
# when every package is already installed it does nothing (and needs no root).
set -eu

PACKAGES="
build-essential autoconf automake libtool pkg-config
libglib2.0-dev libjansson-dev libssl-dev zlib1g-dev libzstd-dev liblz4-dev
libnbd-dev
qemu-utils libnbd-bin nbdkit
qemu-system-common
python3 python3-pytest python3-pytest-xdist
clang libfuzzer-14-dev
fio hyperfine openssl
cpio lz4
"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    exit 0
fi
echo "install-deps: installing:$missing"
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=sudo
    else
        echo "install-deps: need root (or sudo) to install:$missing" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# shellcheck disable=SC2086
$SUDO apt-get install -y --no-install-recommends $missing
