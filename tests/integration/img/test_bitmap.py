"""ferry img bitmap: the bitmaps it writes are the ones qemu-img info sees,
and the same operations fail the same way as with qemu-img bitmap."""
import shutil
import subprocess

import pytest

from conftest import need
from imgutil import assert_same, need_driver_op, need_ferry_qcow2, one_line_error, qcow2, qemu_io, sha, sparse_raw

MiB = 1 << 20


@pytest.mark.parametrize("args", [
    ["bm.raw", "b0"], ["-g", "64k", "--remove", "bm.raw", "b0"],
    ["-F", "raw", "--add", "bm.raw", "b0"], ["-b", "x", "--add", "bm.raw", "b0"],
    ["--add", "bm.raw"],
])
def test_bitmap_usage_errors_like_qemu(ferry, qemu_img, tmp_path, args):
    img = sparse_raw(tmp_path / "bm.raw", MiB, [])
    args = [img if a == "bm.raw" else a for a in args]
    o, _ = assert_same(ferry, qemu_img, "bitmap", *args)
    assert o.rc == 1
    one_line_error(o)


def test_bitmap_raw_refused(ferry, qemu_img, tmp_path):
    img = sparse_raw(tmp_path / "bm.raw", MiB, [])
    before = sha(img)
    o, _ = assert_same(ferry, qemu_img, "bitmap", "--add", "-f", "raw", img, "b0", stdout=False)
    assert o.rc == 1
    one_line_error(o)
    assert sha(img) == before


def bitmaps(qemu_img, img):
    info = qemu_img("info", "--output=json", img).json()
    return {b["name"]: b for b in info["format-specific"]["data"].get("bitmaps", [])}


@pytest.fixture
def img(qemu_img, tmp_path):
    need_ferry_qcow2(tmp_path)
    need_driver_op(tmp_path, "bitmap", "bitmap", "--add", "SCRATCH", "probe")
    return qcow2(qemu_img, tmp_path / "bm.qcow2", "8M")


def test_bitmap_add_disable_remove_seen_by_qemu(ferry, qemu_img, img):
    ferry("img", "bitmap", "--add", img, "b0")
    ferry("img", "bitmap", "--add", "-g", "4k", "--disable", img, "b1")
    bms = bitmaps(qemu_img, img)
    assert bms["b0"]["granularity"] == 65536 and bms["b0"]["flags"] == ["auto"]
    assert bms["b1"]["granularity"] == 4096 and bms["b1"]["flags"] == []
    assert qemu_img("check", img).rc == 0
    ferry("img", "bitmap", "--enable", img, "b1")
    assert bitmaps(qemu_img, img)["b1"]["flags"] == ["auto"]
    ferry("img", "bitmap", "--remove", img, "b0")
    assert list(bitmaps(qemu_img, img)) == ["b1"]
    assert qemu_img("check", img).rc == 0


def dirty(img, name):
    """The dirty extents of bitmap `name`, read by qemu-nbd and nbdinfo."""
    need("nbdinfo")
    need("qemu-nbd")
    r = subprocess.run(["nbdinfo", "--map=qemu:dirty-bitmap:" + name, "--", "[",
                        "qemu-nbd", "-r", "-f", "qcow2", "-B", name, str(img), "]"],
                       capture_output=True, text=True, check=True)
    return [tuple(int(x) for x in l.split()[:2]) for l in r.stdout.splitlines()
            if l.split()[-1] == "dirty"]


def test_bitmap_merge_and_clear_seen_by_qemu(ferry, qemu_img, img, tmp_path):
    qemu_img("bitmap", "--add", img, "src")
    qemu_io(img, "qcow2", "write -P 1 1M 64k", "write -P 1 5M 4k")  # marks "src"
    theirs = tmp_path / "theirs.qcow2"
    shutil.copy(img, theirs)
    ferry("img", "bitmap", "--add", "--merge", "src", img, "dst")
    qemu_img("bitmap", "--add", "--merge", "src", theirs, "dst")
    assert dirty(img, "dst") == dirty(theirs, "dst") == [(MiB, 65536), (5 * MiB, 65536)]
    # merge from another image's bitmap (-b)
    other = qcow2(qemu_img, tmp_path / "other.qcow2", "8M")
    qemu_img("bitmap", "--add", other, "o")
    qemu_io(other, "qcow2", "write -P 1 7M 64k")
    ferry("img", "bitmap", "--merge", "o", "-b", other, "-F", "qcow2", img, "dst")
    assert dirty(img, "dst") == [(MiB, 65536), (5 * MiB, 65536), (7 * MiB, 65536)]
    ferry("img", "bitmap", "--clear", img, "src")
    assert dirty(img, "src") == []
    assert qemu_img("check", img).rc == 0


def test_bitmap_failures_like_qemu(ferry, qemu_img, img, tmp_path):
    qemu_img("bitmap", "--add", img, "b0")
    theirs = tmp_path / "theirs.qcow2"
    shutil.copy(img, theirs)
    before = sha(img)
    for args in (["--clear", "IMG", "nosuch"], ["--add", "IMG", "b0"],
                 ["--merge", "nosuch", "IMG", "b0"], ["--remove", "IMG", "nosuch"]):
        o = ferry("img", "bitmap", *[img if a == "IMG" else a for a in args],
                  check=False)
        t = qemu_img("bitmap", *[theirs if a == "IMG" else a for a in args],
                     check=False)
        assert o.rc == t.rc == 1 and o.out == t.out, (o, t)
        one_line_error(o)
    # qemu-img rewrites the bitmaps of an image it opened for writing even
    # when the operation fails; ferry leaves the file alone
    assert sha(img) == before
