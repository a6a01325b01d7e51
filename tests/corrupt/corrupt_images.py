#!/usr/bin/env python3
"""The corpus of corrupt qcow2 images ferry must reject or report clearly.

Each case starts from a valid image made by qemu-img (and filled by qemu-io),
then pokes bytes.  No image is committed: `python3 corrupt_images.py DIR`
writes the corpus into DIR, and the tests and the fuzzer build it the same
way.  CASES says, for each image, which operation meets the damage first:

  open   -- `ferry img info` must fail with one clear line
  read   -- opening works, reading guest data must fail (EIO) clearly,
            and `ferry img check` must report corruption (exit 2)
  check  -- opening and reading may work; `ferry img check` reports
            corruption (exit 2) or leaks (exit 3)
"""
import os
import shutil
import struct
import subprocess
import sys

CLUSTER = 65536


def run(*args):
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


class Image:
    """A qcow2 file we can read and poke by header field."""

    def __init__(self, path):
        self.path = path

    def read(self, off, n):
        with open(self.path, "rb") as f:
            f.seek(off)
            return f.read(n)

    def write(self, off, data):
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(data)

    def u32(self, off):
        return struct.unpack(">I", self.read(off, 4))[0]

    def u64(self, off):
        return struct.unpack(">Q", self.read(off, 8))[0]

    def put32(self, off, v):
        self.write(off, struct.pack(">I", v))

    def put64(self, off, v):
        self.write(off, struct.pack(">Q", v))

    # header fields (qcow2.txt "Header")
    l1_offset = property(lambda s: s.u64(40))
    l1_size = property(lambda s: s.u32(36))
    reftable_offset = property(lambda s: s.u64(48))

    def l1_entry(self, i):
        return self.u64(self.l1_offset + 8 * i)

    def l2_offset(self, i=0):
        return self.l1_entry(i) & 0x00fffffffffffe00

    def l2_entry(self, guest_cluster):
        return self.u64(self.l2_offset() + 8 * guest_cluster)

    def refblock_offset(self):
        return self.u64(self.reftable_offset) & ~0x1ff

    def size(self):
        return os.path.getsize(self.path)


def base_image(path, extra_opts="", data=True):
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o",
        "cluster_size=64k" + ("," + extra_opts if extra_opts else ""), path, "64M")
    if data:
        # guest clusters 0, 1 and 16 hold data
        run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 128k",
            "-c", "write -P 0x22 1M 64k", path)
    return Image(path)


def eof_aligned(img, extra=16):
    return (img.size() + CLUSTER - 1) // CLUSTER * CLUSTER + extra * CLUSTER


# -- the cases: each takes a path, makes the image (and any companions) ----

def truncated_header(p):
    img = base_image(p)
    with open(p, "r+b") as f:
        f.truncate(50)


def version_4(p):
    base_image(p).put32(4, 4)


def unknown_incompatible_bits(p):
    img = base_image(p)
    img.put64(72, img.u64(72) | (1 << 5) | (1 << 40))


def cluster_bits_absurd(p):
    base_image(p).put32(20, 30)


def refcount_order_7(p):
    base_image(p).put32(96, 7)


def header_length_odd(p):
    base_image(p).put32(100, 105)


def absurd_virtual_size(p):
    base_image(p).put64(24, 1 << 62)


def absurd_l1_size(p):
    base_image(p).put32(36, 0x7fffffff)


def l1_past_eof(p):
    img = base_image(p)
    img.put64(40, eof_aligned(img))


def l1_unaligned(p):
    img = base_image(p)
    img.put64(40, img.l1_offset + 512)


def reftable_past_eof(p):
    img = base_image(p)
    img.put64(48, eof_aligned(img))


def reftable_clusters_absurd(p):
    base_image(p).put32(56, 0x7fffffff)


def backing_name_past_header(p):
    img = base_image(p, data=False)
    img.put64(8, CLUSTER - 4)
    img.put32(16, 64)


def backing_name_too_long(p):
    img = base_image(p, data=False)
    img.put64(8, 0x200)
    img.put32(16, 4096)


def snapshot_table_past_eof(p):
    img = base_image(p)
    img.put32(60, 1)
    img.put64(64, eof_aligned(img))


def snapshot_count_absurd(p):
    img = base_image(p)
    img.put32(60, 0x7fffffff)
    img.put64(64, CLUSTER * 2)


def extension_length_overflow(p):
    img = base_image(p, data=False)
    hdr_len = img.u32(100)
    # the first extension after the header: give it an absurd length
    img.put32(hdr_len + 4, 0xfffffff0)


def l2_past_eof(p):
    img = base_image(p)
    img.put64(img.l1_offset, (1 << 63) | eof_aligned(img, 64))


def data_cluster_past_eof(p):
    img = base_image(p)
    img.put64(img.l2_offset(), (1 << 63) | eof_aligned(img, 64))


def data_cluster_unaligned(p):
    img = base_image(p)
    img.put64(img.l2_offset(), img.l2_entry(0) + 512)


def compressed_past_eof(p):
    run("qemu-img", "create", "-q", "-f", "qcow2", p, "64M")
    run("qemu-io", "-f", "qcow2", "-c", "write -c -P 0x33 0 64k", p)
    img = Image(p)
    e = img.l2_entry(0)
    # keep the compressed flag and size bits, move the offset past EOF
    csize_shift = 62 - (16 - 8)
    size_bits = e & (((1 << 62) - 1) & ~((1 << csize_shift) - 1))
    img.put64(img.l2_offset(), (1 << 62) | size_bits | eof_aligned(img, 64))


def l2_overlaps_refcount_block(p):
    img = base_image(p)
    img.put64(img.l1_offset, (1 << 63) | img.refblock_offset())


def data_overlaps_l1(p):
    img = base_image(p)
    img.put64(img.l2_offset(), (1 << 63) | img.l1_offset)


def data_overlaps_refcount_block(p):
    """An in-place writable data cluster that is the refcount block."""
    img = base_image(p)
    img.put64(img.l2_offset(), (1 << 63) | img.refblock_offset())


def data_overlaps_snapshot_l2(p):
    """An in-place writable data cluster that is a snapshot's L2 table."""
    img = with_snapshot(p)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x55 64k 4k", p)  # COW the L2
    snap_l1 = img.u64(snapshot_entry(img))
    snap_l2 = img.u64(snap_l1) & 0x00fffffffffffe00
    assert snap_l2 != img.l2_offset()
    img.put64(img.l2_offset() + 8 * 5, (1 << 63) | snap_l2)


def refcount_overflow(p):
    """refcount_bits=1: two L2 entries share one cluster whose refcount can
    only be 1."""
    img = base_image(p, "refcount_bits=1")
    img.put64(img.l2_offset() + 8 * 16, img.l2_entry(0))


def refcount_zero_for_used_cluster(p):
    img = base_image(p)
    data = img.l2_entry(0) & 0x00fffffffffffe00
    rb = img.refblock_offset()
    img.write(rb + 2 * (data // CLUSTER), b"\0\0")


def leaked_cluster(p):
    img = base_image(p)
    # a cluster past the end with refcount 1 and no user: a leak
    n = img.size() // CLUSTER
    with open(p, "r+b") as f:
        f.truncate((n + 1) * CLUSTER)
    img.write(img.refblock_offset() + 2 * n, struct.pack(">H", 1))


def with_snapshot(p):
    img = base_image(p)
    run("qemu-img", "snapshot", "-c", "s1", p)
    return img


def snapshot_entry(img):
    """Offset of the first snapshot table entry (header field 64)."""
    return img.u64(64)


def snapshot_l1_past_eof(p):
    img = with_snapshot(p)
    img.put64(snapshot_entry(img), eof_aligned(img))


def snapshot_l1_unaligned(p):
    img = with_snapshot(p)
    e = snapshot_entry(img)
    img.put64(e, img.u64(e) + 512)


def snapshot_l1_size_absurd(p):
    img = with_snapshot(p)
    img.put32(snapshot_entry(img) + 8, 0x7fffffff)


def snapshot_extra_data_absurd(p):
    img = with_snapshot(p)
    img.put32(snapshot_entry(img) + 36, 0x7fffffff)


def snapshot_entry_past_eof(p):
    """The second of two entries would start past the end of the file."""
    img = with_snapshot(p)
    e = snapshot_entry(img)
    # the id string of entry 0 swallows the rest of the file
    img.write(e + 12, struct.pack(">H", 0xffff))
    img.put32(60, 2)


def snapshot_extra_incomplete(p):
    """A v3 snapshot entry with 8 bytes of extra data (no disk size)."""
    img = with_snapshot(p)
    e = snapshot_entry(img)
    hdr = bytearray(img.read(e, 40))
    extra = struct.unpack(">I", hdr[36:40])[0]
    id_len, name_len = struct.unpack(">HH", hdr[12:16])
    tail = img.read(e + 40 + extra, id_len + name_len)
    hdr[36:40] = struct.pack(">I", 8)
    img.write(e, bytes(hdr) + img.read(e + 40, 8) + tail + b"\0" * 16)


def with_bitmap(p):
    img = base_image(p)
    run("qemu-img", "bitmap", "--add", p, "b0")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x44 2M 64k", p)
    return img


def bitmaps_ext(img):
    """Offset of the bitmaps header extension's data."""
    pos = img.u32(100)
    while True:
        kind, length = struct.unpack(">II", img.read(pos, 8))
        if kind == 0x23852875:
            return pos + 8
        assert kind != 0, "no bitmaps extension"
        pos += 8 + (length + 7) // 8 * 8


def bitmap_dir_past_eof(p):
    img = with_bitmap(p)
    img.put64(bitmaps_ext(img) + 16, eof_aligned(img))


def bitmap_count_absurd(p):
    img = with_bitmap(p)
    img.put32(bitmaps_ext(img), 0x7fffffff)


def bitmap_dir_size_absurd(p):
    img = with_bitmap(p)
    img.put64(bitmaps_ext(img) + 8, 1 << 40)


def bitmap_table_size_absurd(p):
    img = with_bitmap(p)
    d = img.u64(bitmaps_ext(img) + 16)
    img.put32(d + 8, 0x7fffffff)


def bitmap_table_past_eof(p):
    img = with_bitmap(p)
    d = img.u64(bitmaps_ext(img) + 16)
    img.put64(d, eof_aligned(img))


def bitmap_granularity_absurd(p):
    img = with_bitmap(p)
    d = img.u64(bitmaps_ext(img) + 16)
    img.write(d + 17, bytes([63]))


def bitmap_name_past_dir(p):
    img = with_bitmap(p)
    d = img.u64(bitmaps_ext(img) + 16)
    img.write(d + 18, struct.pack(">H", 1000))


def backing_chain_loop(p):
    d = os.path.dirname(p)
    other = os.path.join(d, os.path.basename(p) + ".b.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", other, "64M")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", other, "-F", "qcow2", p)
    run("qemu-img", "rebase", "-u", "-f", "qcow2", "-b", p, "-F", "qcow2", other)


def backing_self(p):
    run("qemu-img", "create", "-q", "-f", "qcow2", p, "64M")
    run("qemu-img", "rebase", "-u", "-f", "qcow2", "-b", p, "-F", "qcow2", p)


# name -> (builder, where the damage is met)
CASES = {
    "truncated-header": (truncated_header, "open"),
    "version-4": (version_4, "open"),
    "unknown-incompatible-bits": (unknown_incompatible_bits, "open"),
    "cluster-bits-absurd": (cluster_bits_absurd, "open"),
    "refcount-order-7": (refcount_order_7, "open"),
    "header-length-odd": (header_length_odd, "open"),
    "absurd-virtual-size": (absurd_virtual_size, "open"),
    "absurd-l1-size": (absurd_l1_size, "open"),
    "l1-past-eof": (l1_past_eof, "open"),
    "l1-unaligned": (l1_unaligned, "open"),
    "reftable-past-eof": (reftable_past_eof, "open"),
    "reftable-clusters-absurd": (reftable_clusters_absurd, "open"),
    "backing-name-past-header": (backing_name_past_header, "open"),
    "backing-name-too-long": (backing_name_too_long, "open"),
    "snapshot-table-past-eof": (snapshot_table_past_eof, "open"),
    "snapshot-count-absurd": (snapshot_count_absurd, "open"),
    "extension-length-overflow": (extension_length_overflow, "open"),
    "snapshot-l1-past-eof": (snapshot_l1_past_eof, "open"),
    "snapshot-l1-unaligned": (snapshot_l1_unaligned, "open"),
    "snapshot-l1-size-absurd": (snapshot_l1_size_absurd, "open"),
    "snapshot-extra-data-absurd": (snapshot_extra_data_absurd, "open"),
    "snapshot-entry-past-eof": (snapshot_entry_past_eof, "open"),
    "bitmap-dir-past-eof": (bitmap_dir_past_eof, "open"),
    "bitmap-count-absurd": (bitmap_count_absurd, "open"),
    "bitmap-dir-size-absurd": (bitmap_dir_size_absurd, "open"),
    "bitmap-table-size-absurd": (bitmap_table_size_absurd, "open"),
    "bitmap-table-past-eof": (bitmap_table_past_eof, "open"),
    "bitmap-granularity-absurd": (bitmap_granularity_absurd, "open"),
    "bitmap-name-past-dir": (bitmap_name_past_dir, "open"),
    "backing-chain-loop": (backing_chain_loop, "open"),
    "backing-self": (backing_self, "open"),
    "l2-past-eof": (l2_past_eof, "read"),
    "data-cluster-past-eof": (data_cluster_past_eof, "read"),
    "data-cluster-unaligned": (data_cluster_unaligned, "read"),
    "compressed-past-eof": (compressed_past_eof, "read"),
    "l2-overlaps-refcount-block": (l2_overlaps_refcount_block, "check"),
    "data-overlaps-l1": (data_overlaps_l1, "check"),
    "data-overlaps-refcount-block": (data_overlaps_refcount_block, "check"),
    "data-overlaps-snapshot-l2": (data_overlaps_snapshot_l2, "check"),
    "snapshot-extra-incomplete": (snapshot_extra_incomplete, "check"),
    "refcount-overflow": (refcount_overflow, "check"),
    "refcount-zero-for-used-cluster": (refcount_zero_for_used_cluster, "check"),
    "leaked-cluster": (leaked_cluster, "leak"),
}


def build(directory, names=None):
    """Write the corpus into directory; returns {name: path}."""
    os.makedirs(directory, exist_ok=True)
    out = {}
    for name, (fn, _) in CASES.items():
        if names and name not in names:
            continue
        path = os.path.join(directory, name + ".qcow2")
        fn(path)
        out[name] = path
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: corrupt_images.py DIR [case ...]")
    for name, path in build(sys.argv[1], sys.argv[2:]).items():
        print(path)
