"""qcow2 images and backing chains over NBD: ferry nbd exporting them
(judged against qemu-nbd on the same chain and by qemu-img check), and
ferry's nbd driver as the backing file of a qcow2 overlay and under
'ferry img map/compare' (judged against qemu-img)."""
import json
import os
import subprocess

import pytest

from conftest import need, pattern_file, run
from nbdutil import ferry_nbd, qemu_nbd

MiB = 1 << 20


def copy_chain(tmp_path, files, sub):
    d = tmp_path / sub
    d.mkdir()
    for f in files:
        subprocess.run(["cp", "--sparse=always", str(f), str(d)], check=True)
    return d


@pytest.fixture
def chain(tmp_path, qemu_img, qemu_io):
    """base.qcow2 <- top.qcow2: data in both layers, a zero cluster on top."""
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", base, "16M")
    qemu_io("-f", "qcow2", "-c", "write -P 0x11 0 2M",
            "-c", "write -P 0x12 8M 1M", base)
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
    qemu_io("-f", "qcow2", "-c", "write -P 0x21 1M 1M",
            "-c", "write -z 8M 64k", "-c", "write -P 0x22 12M 128k", top)
    return tmp_path


def maps(uri, ctx=None):
    args = ["nbdinfo", "--map" + ("=" + ctx if ctx else ""), "--json", uri]
    return json.loads(run(args).out)


def test_chain_maps_match_qemu_nbd(chain, tmp_path):
    need("nbdinfo")
    theirs_dir = copy_chain(tmp_path, [chain / "base.qcow2",
                                       chain / "top.qcow2"], "q")
    with ferry_nbd(tmp_path, chain / "top.qcow2", "-r", "-A",
                   fmt="qcow2") as ours, \
            qemu_nbd(tmp_path, theirs_dir / "top.qcow2", "-r", "-A",
                     fmt="qcow2") as theirs:
        for ctx in (None, "qemu:allocation-depth"):
            assert maps(ours.uri(), ctx) == maps(theirs.uri(), ctx), ctx
        depth = maps(ours.uri(), "qemu:allocation-depth")
        run(["nbdcopy", ours.uri(), str(tmp_path / "ours.raw")])
        run(["nbdcopy", theirs.uri(), str(tmp_path / "theirs.raw")])
    # depth 1 = top, 2 = base, 0 = nowhere
    assert {e["type"] for e in depth} == {0, 1, 2}
    assert open(tmp_path / "ours.raw", "rb").read() == \
        open(tmp_path / "theirs.raw", "rb").read()


def test_writes_to_a_qcow2_export_pass_qemu_img_check(chain, tmp_path,
                                                      qemu_img, qemu_io):
    top = chain / "top.qcow2"
    with ferry_nbd(tmp_path, top, "-e", "4", fmt="qcow2") as srv:
        qemu_io("-f", "raw", "-c", "write -P 0x31 3M 3M",
                "-c", "write -z 12M 64k", "-c", "discard 1M 64k",
                "-c", "aio_write -P 0x32 15M 4k", "-c", "aio_write -P 0x33 "
                "15M 4k", "-c", "aio_flush", srv.uri())
    qemu_img("check", top)
    qemu_io("-f", "qcow2", "-c", "read -P 0x31 3M 3M",
            "-c", "read -P 0 12M 64k", "-c", "read -P 0x11 0 1M", top)


def test_nbd_export_as_a_qcow2_backing_file(tmp_path, ferry, qemu_img,
                                            qemu_io):
    base = tmp_path / "base.raw"
    pattern_file(base, 4 * MiB)
    with qemu_nbd(tmp_path, base, "-r") as srv:
        overlay = tmp_path / "overlay.qcow2"
        qemu_img("create", "-f", "qcow2", "-b", srv.uri(), "-F", "raw",
                 overlay)
        ferry("io", "-f", "qcow2", "-c", "write -P 0x55 1M 64k", overlay)
        info = ferry("img", "info", "--output=json", "--backing-chain",
                     overlay).json()
        assert info[1]["filename"] == srv.uri()
        # reads fall through to the NBD backing file: the overlay reads
        # as the base with the one write on top
        expect = tmp_path / "expect.raw"
        data = bytearray(open(base, "rb").read())
        data[MiB:MiB + 65536] = b"\x55" * 65536
        expect.write_bytes(bytes(data))
        ferry("img", "compare", "-f", "qcow2", "-F", "raw", overlay, expect)
        theirs = qemu_img("map", "--output=json", overlay).json()
        ours = ferry("img", "map", "--output=json", overlay).json()
        assert [(m["start"], m["length"], m["depth"], m["data"], m["zero"])
                for m in ours] == \
               [(m["start"], m["length"], m["depth"], m["data"], m["zero"])
                for m in theirs]
        qemu_io("-f", "qcow2", "-c", "read -P 0x55 1M 64k", overlay)


def test_img_map_over_nbd_matches_qemu_img(tmp_path, ferry, qemu_img):
    img = tmp_path / "m.raw"
    with open(img, "wb") as f:
        f.truncate(32 * MiB)
        f.seek(4 * MiB)
        f.write(b"\x01" * MiB)
        f.seek(20 * MiB)
        f.write(b"\x02" * 8192)
    with qemu_nbd(tmp_path, img, "-r") as srv:
        ours = ferry("img", "map", "--output=json", srv.uri()).json()
        theirs = qemu_img("map", "--output=json", srv.uri()).json()
        ferry("img", "compare", "-f", "raw", "-F", "raw", img, srv.uri())
    key = lambda m: (m["start"], m["length"], m["data"], m["zero"])  # noqa
    assert [key(m) for m in ours] == [key(m) for m in theirs]


def test_persistent_bitmap_export_matches_qemu_nbd(tmp_path, qemu_img,
                                                   qemu_io):
    """-B on a qcow2 persistent bitmap: the same map as qemu-nbd's; writes
    through ferry's export mark it, and qemu-nbd sees them once ferry has
    stored the bitmap at exit."""
    need("nbdinfo")
    img = tmp_path / "bm.qcow2"
    qemu_img("create", "-f", "qcow2", img, "64M")
    qemu_img("bitmap", "--add", img, "b0")
    qemu_io("-f", "qcow2", "-c", "write -P 1 1M 64k", "-c",
            "write -P 2 10M 3M", img)
    ctx = "qemu:dirty-bitmap:b0"
    twin = copy_chain(tmp_path, [img], "twin") / "bm.qcow2"
    with ferry_nbd(tmp_path, img, "-r", "-B", "b0", fmt="qcow2") as ours, \
            qemu_nbd(tmp_path, twin, "-r", "-B", "b0", fmt="qcow2") as theirs:
        assert maps(ours.uri(), ctx) == maps(theirs.uri(), ctx)
    with ferry_nbd(tmp_path, img, "-B", "b0", fmt="qcow2", tag="rw") as srv:
        qemu_io("-f", "raw", "-c", "write -P 3 40M 128k", srv.uri())
        dirty = [(e["offset"], e["length"]) for e in maps(srv.uri(), ctx)
                 if e["type"] == 1]
        assert (40 * MiB, 128 * 1024) in dirty
    qemu_img("check", img)
    with qemu_nbd(tmp_path, img, "-r", "-B", "b0", fmt="qcow2",
                  tag="after") as theirs:
        dirty = [(e["offset"], e["length"]) for e in maps(theirs.uri(), ctx)
                 if e["type"] == 1]
    assert dirty == [(MiB, 65536), (10 * MiB, 3 * MiB),
                     (40 * MiB, 128 * 1024)]
