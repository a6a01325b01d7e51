#!/bin/sh
# Install everything, build, and show ferry's main job: disk images that
# QEMU's own tools accept, made and inspected by ferry.
set -eu
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
FERRY="$(pwd)/ferry"
work=$(mktemp -d /tmp/ferry-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step "$FERRY" --version
step "$FERRY" img create -f raw "$work/disk.raw" 64M
step qemu-io -f raw -c "write -P 0xab 1M 4M" "$work/disk.raw"
step "$FERRY" img info "$work/disk.raw"
step "$FERRY" img info --output=json "$work/disk.raw"
step qemu-img info "$work/disk.raw"
echo
echo "demo finished: ferry created and inspected an image qemu-img agrees on"
