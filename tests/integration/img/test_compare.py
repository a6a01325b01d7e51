"""ferry img compare against qemu-img compare: verdict line and exit code
(0 identical, 1 different, 2 open error), on raw, null-co and qcow2."""
import json
import shutil

import pytest

from imgutil import (assert_same, need_ferry_qcow2, one_line_error, qcow2,
                     qemu_io, sha, sparse_raw)

MiB = 1 << 20


@pytest.fixture
def pair(tmp_path):
    a = sparse_raw(tmp_path / "a.raw", 12 * MiB, [
        (1 * MiB, 64 * 1024, 0x11), (3 * MiB, 3 * MiB, 0x22), (8 * MiB, 4096, 0)])
    b = tmp_path / "b.raw"
    shutil.copy(a, b)
    return a, b


def test_compare_identical(ferry, qemu_img, pair):
    a, b = pair
    before = (sha(a), sha(b))
    ours, _ = assert_same(ferry, qemu_img, "compare", a, b)
    assert ours.rc == 0 and ours.out == "Images are identical.\n"
    assert (sha(a), sha(b)) == before


@pytest.mark.parametrize("offset", [0, 3000000, 1 * MiB + 65535, 5 * MiB + 7,
                                    10 * MiB + 1, 12 * MiB - 1])
def test_compare_mismatch_offset_matches_qemu(ferry, qemu_img, pair, offset):
    a, b = pair
    qemu_io(b, "raw", "write -P 0x5a %d 1" % offset)
    for args in (("compare", a, b), ("compare", b, a), ("compare", "-f", "raw",
                                                        "-F", "raw", a, b)):
        ours, _ = assert_same(ferry, qemu_img, *args)
        assert ours.rc == 1
        assert ours.out == "Content mismatch at offset %d!\n" % (offset // 512 * 512)


def test_compare_sizes_differ(ferry, qemu_img, pair, tmp_path):
    a, b = pair
    with open(b, "r+b") as f:
        f.truncate(16 * MiB)
    ours, _ = assert_same(ferry, qemu_img, "compare", a, b)
    assert ours.rc == 0 and "Warning: Image size mismatch!" in ours.out
    ours, _ = assert_same(ferry, qemu_img, "compare", "-s", a, b)
    assert ours.rc == 1 and ours.out == "Strict mode: Image size mismatch!\n"
    qemu_io(b, "raw", "write -P 1 %d 512" % (14 * MiB + 512))
    for args in (("compare", a, b), ("compare", b, a)):
        ours, _ = assert_same(ferry, qemu_img, *args)
        assert ours.rc == 1 and "Content mismatch at offset %d!" % (14 * MiB + 512) in ours.out


def test_compare_quiet_and_errors(ferry, qemu_img, pair, tmp_path):
    a, b = pair
    ours, _ = assert_same(ferry, qemu_img, "compare", "-q", a, b)
    assert ours.rc == 0 and ours.out == ""
    ours, _ = assert_same(ferry, qemu_img, "compare", a, tmp_path / "missing")
    assert ours.rc == 2
    one_line_error(ours)
    ours, _ = assert_same(ferry, qemu_img, "compare", a, stdout=False)
    assert ours.rc == 1
    one_line_error(ours)


def test_compare_null_co_like_qemu(ferry, qemu_img):
    ours, _ = assert_same(ferry, qemu_img, "compare", "--image-opts",
                          "driver=null-co,size=1M,read-zeroes=on",
                          "driver=null-co,size=2M,read-zeroes=on")
    assert ours.rc == 0


def test_compare_progress_json(ferry, pair):
    a, b = pair
    r = ferry("img", "compare", "--progress=json", a, b)
    lines = [json.loads(l) for l in r.err.splitlines()]
    assert lines and lines[-1]["final"] and lines[-1]["percent"] == 100.0
    assert r.out == "Images are identical.\n"
    qemu_io(b, "raw", "write -P 9 4M 1")
    r = ferry("img", "compare", "--progress=json", a, b, check=False)
    assert r.rc == 1
    last = json.loads(r.err.splitlines()[-1])
    assert last["final"] and last["percent"] < 100.0


def test_compare_qcow2_chain_with_raw(ferry, qemu_img, tmp_path):
    need_ferry_qcow2(tmp_path)
    base = qcow2(qemu_img, tmp_path / "base.qcow2", "8M")
    qemu_io(base, "qcow2", "write -P 1 0 1M", "write -P 2 4M 64k")
    top = qcow2(qemu_img, tmp_path / "top.qcow2", None, backing=base)
    qemu_io(top, "qcow2", "write -z 0 64k", "write -P 3 6M 4k")
    flat = tmp_path / "flat.raw"
    qemu_img("convert", "-O", "raw", top, flat)
    for args in (("compare", top, flat), ("compare", flat, top),
                 ("compare", "-s", top, flat), ("compare", base, top)):
        assert_same(ferry, qemu_img, *args)
    qemu_io(flat, "raw", "write -P 7 %d 1" % (6 * MiB + 4095))
    ours, _ = assert_same(ferry, qemu_img, "compare", top, flat)
    assert ours.rc == 1


def test_compare_strict_like_qemu(ferry, qemu_img, tmp_path):
    """-s compares block status too, flag for flag as qemu-img does."""
    need_ferry_qcow2(tmp_path)
    a = sparse_raw(tmp_path / "a.raw", 8 * MiB, [(MiB, 64 * 1024, 1), (3 * MiB, MiB, 2)])
    b = sparse_raw(tmp_path / "b.raw", 8 * MiB, [(MiB, 64 * 1024, 1), (3 * MiB, MiB, 2),
                                                 (6 * MiB, 4096, 0)])
    q = tmp_path / "a.qcow2"
    qemu_img("convert", "-O", "qcow2", a, q)
    q2 = tmp_path / "b.qcow2"
    qemu_img("convert", "-O", "qcow2", a, q2)
    qemu_io(q2, "qcow2", "write -P 9 5M 1")
    for x, y in ((a, b), (b, a), (a, q), (q, a), (q, q2), (q2, q), (q, q)):
        assert_same(ferry, qemu_img, "compare", "-s", x, y)
