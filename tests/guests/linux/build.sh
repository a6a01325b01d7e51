#!/bin/sh
# Build a Linux guest for `ferry run` from Debian packages: the cloud
# kernel (bzImage, and vmlinux extracted from it for PVH), and a busybox
# initramfs that loads the virtio modules, reads the first virtio disk and
# powers off.  Everything goes to a cache outside the repository:
#   ${FERRY_GUEST_CACHE:-$HOME/.cache/ferry/guests}/linux/{bzImage,vmlinux,initramfs.cpio.gz}
# Needs apt-get (Debian's registry), dpkg-deb, cpio, gzip, lz4.
set -eu

cache=${FERRY_GUEST_CACHE:-$HOME/.cache/ferry/guests}/linux
mkdir -p "$cache/debs"
cd "$cache/debs"

meta=linux-image-cloud-amd64
kpkg=$(apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
if [ -z "$kpkg" ]; then
    echo "build.sh: cannot resolve $meta (run apt-get update first)" >&2
    exit 1
fi
kver=${kpkg#linux-image-}
for p in "$kpkg" busybox-static; do
    if ! ls "${p}"_*.deb >/dev/null 2>&1; then
        apt-get download "$p"
    fi
done

root="$cache/root"
rm -rf "$root" && mkdir -p "$root"
dpkg-deb -x "$(ls ${kpkg}_*.deb | head -1)" "$root/kernel"
dpkg-deb -x "$(ls busybox-static_*.deb | head -1)" "$root/busybox"
cp "$root/kernel/boot/vmlinuz-$kver" "$cache/bzImage"

# vmlinux for PVH/ELF boot: the LZ4 payload of the bzImage (x86-boot.md 6)
python3 - "$cache/bzImage" "$cache/payload.lz4" <<'PY'
import struct, sys
k = open(sys.argv[1], "rb").read()
setup = (k[0x1f1] or 4) + 1
off, length = struct.unpack_from("<II", k, 0x248)
payload = k[setup * 512 + off: setup * 512 + off + length]
if payload[:4] != b"\x02\x21\x4c\x18":
    sys.exit("payload is not LZ4 legacy (magic %r): skip vmlinux" % payload[:4])
open(sys.argv[2], "wb").write(payload[:-4])   # the last 4 bytes: size
PY
if [ -f "$cache/payload.lz4" ]; then
    lz4 -d -f -q "$cache/payload.lz4" "$cache/vmlinux"
    rm -f "$cache/payload.lz4"
fi

# initramfs
ird="$root/initramfs"
mkdir -p "$ird/bin" "$ird/proc" "$ird/sys" "$ird/dev" "$ird/lib/modules"
cp "$root/busybox/bin/busybox" "$ird/bin/busybox"
for m in virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev \
         virtio_pci virtio_blk virtio-rng; do
    f=$(find "$root/kernel/lib/modules/$kver" -name "$m.ko*" | head -1)
    [ -n "$f" ] || { echo "build.sh: module $m not found" >&2; exit 1; }
    case "$f" in
        *.xz) xz -dc "$f" > "$ird/lib/modules/$m.ko" ;;
        *.zst) zstd -dcq "$f" > "$ird/lib/modules/$m.ko" ;;
        *) cp "$f" "$ird/lib/modules/$m.ko" ;;
    esac
done
cat > "$ird/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev \
         virtio_pci virtio_blk virtio-rng; do
    insmod /lib/modules/$m.ko
done
echo "ferry-linux: up, block devices: $(ls /sys/block | tr '\n' ' ')"
if [ -b /dev/vda ]; then
    echo "ferry-linux: vda first sector: $(dd if=/dev/vda bs=512 count=1 2>/dev/null | md5sum)"
fi
echo "ferry-linux: done"
poweroff -f
INIT
chmod +x "$ird/init"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -9) > "$cache/initramfs.cpio.gz"
echo "$cache/bzImage"
echo "$cache/initramfs.cpio.gz"
[ -f "$cache/vmlinux" ] && echo "$cache/vmlinux"
exit 0
