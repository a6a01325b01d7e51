"""Metadata write order (qcow2/internal.h, invariants 8-10), checked by
killing ferry at random moments of snapshot, bitmap, amend and write
operations.  Whatever ferry had written by then, qemu-img check may find
leaked clusters and stale COPIED flags (a refcount and the flag that
mirrors it live in different tables: no write order keeps them in step,
in QEMU either), but never a refcount lower than its references or a
dangling table; `ferry img check -r all` repairs the image, after which
qemu-img check is clean and every snapshot it lists reads back."""
import random
import subprocess
import time

import pytest

from conftest import ferry_path

MiB = 1 << 20


def check_no_corruption(ferry, qemu_img, img, what):
    res = qemu_img("check", "--output=json", img, check=False)
    errors = [l for l in res.err.splitlines() if l.startswith("ERROR")]
    assert res.rc in (0, 2, 3), "after killing %s:\n%r" % (what, res)
    assert all(l.startswith("ERROR OFLAG_COPIED") for l in errors), \
        "after killing %s:\n%r" % (what, res)
    ours = ferry("img", "check", "--output=json", img, check=False)
    assert ours.rc == res.rc, (what, ours, res)
    if res.rc:
        ferry("img", "check", "-r", "all", img)
        assert qemu_img("check", img, check=False).rc == 0
    # what is listed can be used: every snapshot reads back
    for sn in qemu_img("info", "--output=json", img).json().get("snapshots", []):
        qemu_img("convert", "-O", "raw", "-l", "snapshot.id=" + sn["id"], img,
                 img.with_suffix(".raw"))


def test_killed_anywhere_leaves_only_leaks(ferry, qemu_img, qemu_io, tmp_path):
    img = tmp_path / "k.qcow2"
    # small clusters: many tables, so each operation writes a lot of metadata
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", img, "4M")
    qemu_io("-f", "qcow2", "-c", "write -P 0x11 0 4M", img)
    qemu_img("bitmap", "--add", "-g", "4k", img, "b0")
    rnd = random.Random(1234)
    exe = ferry_path()
    deadline = time.monotonic() + 8
    n = 0
    while time.monotonic() < deadline or n < 30:
        snaps = [s["name"] for s in
                 qemu_img("info", "--output=json", img).json().get("snapshots", [])]
        ops = [["img", "snapshot", "-c", "s%d" % n, img],
               ["io", "-c", "write -P %d %d 256k" % (n % 200 + 1,
                                                     rnd.randrange(16) * 256 * 1024),
                "-c", "discard %d 64k" % (rnd.randrange(64) * 65536), img],
               ["img", "bitmap", "--add", img, "x%d" % n],
               ["img", "amend", "-o", "refcount_bits=%d" % rnd.choice([16, 32, 64]),
                img]]
        if snaps:
            ops += [["img", "snapshot", "-d", rnd.choice(snaps), img],
                    ["img", "snapshot", "-a", rnd.choice(snaps), img]]
        if n % 5 == 4:
            ops.append(["img", "bitmap", "--remove", img, "x%d" % (n - 1)])
        args = rnd.choice(ops)
        proc = subprocess.Popen([exe] + [str(a) for a in args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0, 0.02))
        proc.kill()
        proc.wait()
        check_no_corruption(ferry, qemu_img, img, " ".join(map(str, args[:3])))
        n += 1
    assert n >= 30
