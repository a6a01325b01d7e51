"""Data the server acknowledged after FLUSH, or with FUA, survives kill -9
of the server: qemu-img check finds no corruption and qemu-io reads every
acknowledged byte back.  qcow2 is where this bites (L2 tables and
refcounts live in ferry's caches); raw is checked too."""
import random
import signal

import pytest

import nbdproto as P
from nbdutil import ferry_nbd

MiB = 1 << 20
CLUSTER = 65536


def kill9(srv):
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)


def scattered_writes(c, n, seed, flags=0):
    """n writes of 4-64 KiB at random places, some overlapping; returns
    [(offset, data)] in the order written."""
    rnd = random.Random(seed)
    written = []
    for _ in range(n):
        off = rnd.randrange(0, 60 * MiB // CLUSTER) * CLUSTER + \
            rnd.choice((0, 512, 4096))
        data = bytes([rnd.randrange(1, 256)]) * rnd.choice((4096, 16384,
                                                            65536))
        assert c.pwrite(off, data, flags) == 0
        written.append((off, data))
    return written


def verify(qemu_img, img, fmt, written, tmp_path):
    """The image, read by qemu-img, holds the last bytes written at every
    written place."""
    out = tmp_path / "readback.raw"
    qemu_img("convert", "-f", fmt, "-O", "raw", img, out)
    got = open(out, "rb").read()
    expect = bytearray(got)
    for off, data in written:
        expect[off:off + len(data)] = data
    assert got == bytes(expect)


@pytest.mark.parametrize("mode", ["flush", "fua"])
def test_acknowledged_qcow2_writes_survive_kill9(tmp_path, qemu_img,
                                                  qemu_io, mode):
    img = tmp_path / "c.qcow2"
    qemu_img("create", "-f", "qcow2", img, "64M")
    with ferry_nbd(tmp_path, img, "-e", "0", fmt="qcow2") as srv:
        c = P.Client(srv.sock)
        c.connect_export()
        if mode == "flush":
            written = scattered_writes(c, 150, 1)
            assert c.simple(P.CMD_FLUSH) == 0
        else:
            written = scattered_writes(c, 150, 2, P.FLAG_FUA)
        # write zeroes acknowledged with FUA count too
        assert c.simple(P.CMD_WRITE_ZEROES, 62 * MiB, MiB, P.FLAG_FUA) == 0
        kill9(srv)
    r = qemu_img("check", "--output=json", img, check=False)
    assert r.json()["check-errors"] == 0
    assert "corruptions" not in r.json() or r.json()["corruptions"] == 0
    verify(qemu_img, img, "qcow2", written, tmp_path)
    qemu_io("-f", "qcow2", "-c", "read -P 0 62M 1M", img)


def test_acknowledged_raw_writes_survive_kill9(tmp_path, qemu_img):
    img = tmp_path / "c.raw"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    with ferry_nbd(tmp_path, img, "-e", "0") as srv:
        c = P.Client(srv.sock)
        c.connect_export()
        written = scattered_writes(c, 100, 3, P.FLAG_FUA)
        more = scattered_writes(c, 100, 4)
        assert c.simple(P.CMD_FLUSH) == 0
        kill9(srv)
    verify(qemu_img, img, "raw", written + more, tmp_path)
