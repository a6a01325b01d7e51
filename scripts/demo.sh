#!/bin/sh
# Install everything, build, and show ferry's main job: disk images that
# QEMU's own tools accept, made, filled, inspected and checked by ferry.
set -eu
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
FERRY="$(pwd)/ferry"
work=$(mktemp -d /tmp/ferry-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step "$FERRY" --version
# a base image with data, and an overlay on top of it
step "$FERRY" img create -f qcow2 "$work/base.qcow2" 1G
step "$FERRY" io -c "write -P 0xab 0 4M" -c "write -c -P 0xcd 8M 1M" "$work/base.qcow2"
step "$FERRY" img create -f qcow2 -b "$work/base.qcow2" -F qcow2 "$work/top.qcow2"
step "$FERRY" io -c "write -P 0x11 1M 64k" -c "write -z 2M 1M" "$work/top.qcow2"
step "$FERRY" img info --backing-chain "$work/top.qcow2"
step "$FERRY" img map --output=json "$work/top.qcow2"
# QEMU's tools are the judge: they read what ferry wrote
step qemu-img check "$work/top.qcow2"
step qemu-io -c "read -P 0x11 1M 64k" -c "read -P 0 2M 1M" -c "read -P 0xab 3M 1M" "$work/top.qcow2"
step "$FERRY" img commit "$work/top.qcow2"
step "$FERRY" img check "$work/base.qcow2"
step qemu-img compare "$work/top.qcow2" "$work/base.qcow2"

# Move the disk: serve it over NBD, copy it from the export into a new qcow2.
"$FERRY" nbd -r -t -x disk -k "$work/nbd.sock" "$work/base.qcow2" &
nbd_pid=$!
trap 'kill $nbd_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -S "$work/nbd.sock" ] && break; sleep 0.05; done
uri="nbd+unix:///disk?socket=$work/nbd.sock"
step nbdinfo "$uri"
step "$FERRY" img convert -p -O qcow2 "$uri" "$work/moved.qcow2"
step qemu-img compare "$work/base.qcow2" "$work/moved.qcow2"
kill $nbd_pid
echo
echo "demo finished: ferry made, filled, committed and checked qcow2 images that qemu-img and qemu-io accept, and moved one over NBD"
