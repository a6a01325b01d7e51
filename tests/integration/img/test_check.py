"""ferry img check against qemu-img check: report, JSON and exit codes
(0 clean, 2 corruptions, 3 leaks, 63 no checks for the format)."""
import json
import shutil
import struct

import pytest

from imgutil import (assert_same, need_ferry_qcow2, one_line_error, qcow2,
                     qemu_io, sha, sparse_raw)


def test_check_raw_has_no_checks_like_qemu(ferry, qemu_img, tmp_path):
    img = sparse_raw(tmp_path / "a.raw", 1 << 20, [(0, 4096, 1)])
    before = sha(img)
    for args in (["check", "-f", "raw", img],
                 ["check", "-f", "raw", "--output=json", img],
                 ["check", "-q", img]):
        ours, theirs = assert_same(ferry, qemu_img, *args)
        assert ours.rc == 63
        assert "This image format does not support checks" in ours.err
    assert sha(img) == before


def test_check_null_co_has_no_checks(ferry):
    r = ferry("img", "check", "--image-opts", "driver=null-co,size=1M", check=False)
    assert r.rc == 63


def test_check_usage_errors(ferry, tmp_path):
    r = ferry("img", "check", "-r", "some", tmp_path / "x", check=False)
    assert r.rc == 1
    one_line_error(r)
    r = ferry("img", "check", tmp_path / "missing", check=False)
    assert r.rc == 1
    one_line_error(r)


# -- qcow2 images made by qemu-img, damaged on purpose -----------------------

def qcow2_layout(path):
    """(cluster_size, refcount_bits, refcount table offset) of a qcow2 file."""
    with open(path, "rb") as f:
        hdr = f.read(104)
    cluster_bits = struct.unpack(">I", hdr[20:24])[0]
    rt_off = struct.unpack(">Q", hdr[48:56])[0]
    refcount_order = struct.unpack(">I", hdr[96:100])[0]
    return 1 << cluster_bits, 1 << refcount_order, rt_off


def set_refcount(path, cluster_index, value):
    """Poke the refcount of one cluster (16-bit refcounts, first block)."""
    cs, bits, rt_off = qcow2_layout(path)
    assert bits == 16
    with open(path, "r+b") as f:
        f.seek(rt_off)
        block = struct.unpack(">Q", f.read(8))[0]
        assert cluster_index < cs * 8 // bits
        f.seek(block + cluster_index * 2)
        f.write(struct.pack(">H", value))


@pytest.fixture
def clean_qcow2(qemu_img, tmp_path):
    need_ferry_qcow2(tmp_path)
    img = qcow2(qemu_img, tmp_path / "clean.qcow2")
    qemu_io(img, "qcow2", "write -P 1 0 256k", "write -P 2 8M 64k",
            "write -z 16M 64k", "write -c -P 3 32M 128k")
    return img


@pytest.fixture
def leaky_qcow2(clean_qcow2, tmp_path):
    img = tmp_path / "leaky.qcow2"
    shutil.copy(clean_qcow2, img)
    cs, _, _ = qcow2_layout(img)
    # a cluster past the end (compressed data may end mid-cluster)
    leaked = (img.stat().st_size + cs - 1) // cs
    with open(img, "r+b") as f:
        f.truncate((leaked + 1) * cs)
    set_refcount(img, leaked, 1)
    return img


@pytest.fixture
def corrupt_qcow2(clean_qcow2, qemu_img, tmp_path):
    img = tmp_path / "corrupt.qcow2"
    shutil.copy(clean_qcow2, img)
    cs, _, _ = qcow2_layout(img)
    first = next(e for e in qemu_img("map", "--output=json", img).json()
                 if e["data"] and "offset" in e)
    set_refcount(img, first["offset"] // cs, 0)
    return img


@pytest.mark.parametrize("output", ["human", "json"])
def test_check_clean_qcow2_matches_qemu(ferry, qemu_img, clean_qcow2, output):
    before = sha(clean_qcow2)
    ours, _ = assert_same(ferry, qemu_img, "check", "--output=" + output, clean_qcow2)
    assert ours.rc == 0
    assert sha(clean_qcow2) == before


@pytest.mark.parametrize("which,rc", [("leaky_qcow2", 3), ("corrupt_qcow2", 2)])
@pytest.mark.parametrize("output", ["human", "json"])
def test_check_damage_matches_qemu_and_writes_nothing(ferry, qemu_img, request,
                                                       which, rc, output):
    img = request.getfixturevalue(which)
    before = sha(img)
    ours, _ = assert_same(ferry, qemu_img, "check", "--output=" + output, img)
    assert ours.rc == rc
    assert sha(img) == before, "check without -r wrote to the image"


@pytest.mark.parametrize("which,mode", [("leaky_qcow2", "leaks"),
                                        ("leaky_qcow2", "all"),
                                        ("corrupt_qcow2", "all")])
def test_check_repair_like_qemu(ferry, qemu_img, request, tmp_path, which, mode):
    img = request.getfixturevalue(which)
    theirs_img = tmp_path / "theirs.qcow2"
    shutil.copy(img, theirs_img)
    ours = ferry("img", "check", "--output=json", "-r", mode, img, check=False)
    theirs = qemu_img("check", "--output=json", "-r", mode, theirs_img, check=False)
    assert ours.rc == theirs.rc
    o, t = json.loads(ours.out), json.loads(theirs.out)
    t["filename"] = o["filename"]
    # ferry's qcow2 repair may rebuild the refcount structures where QEMU
    # patches them in place, so where the image ends may differ
    o.pop("image-end-offset", None)
    t.pop("image-end-offset", None)
    if which == "leaky_qcow2":
        assert o == t
    else:
        for key in ("corruptions-fixed", "leaks-fixed", "check-errors",
                    "total-clusters", "allocated-clusters"):
            assert o.get(key) == t.get(key), key
    # the repaired image is clean in qemu-img's eyes, and reads the same
    assert qemu_img("check", img, check=False).rc == 0
    assert qemu_img("compare", img, theirs_img, check=False).rc == 0


def test_check_repair_human_report(ferry, qemu_img, leaky_qcow2, tmp_path):
    theirs_img = tmp_path / "theirs.qcow2"
    shutil.copy(leaky_qcow2, theirs_img)
    ours = ferry("img", "check", "-r", "leaks", leaky_qcow2, check=False)
    theirs = qemu_img("check", "-r", "leaks", theirs_img, check=False)
    assert ours.rc == theirs.rc == 0
    strip = lambda out: [l for l in out.splitlines() if not l.startswith("Image end offset")]
    assert strip(ours.out) == strip(theirs.out)


def test_check_json_key_order_is_qemus(ferry, qemu_img, leaky_qcow2):
    """Scripts that diff qemu-img's JSON get the same bytes."""
    ours, theirs = assert_same(ferry, qemu_img, "check", "--output=json", leaky_qcow2)
    assert list(json.loads(ours.out)) == list(json.loads(theirs.out))


def test_check_repair_refuses_force_share(ferry, leaky_qcow2):
    before = sha(leaky_qcow2)
    r = ferry("img", "check", "-U", "-r", "leaks", leaky_qcow2, check=False)
    assert r.rc == 1
    one_line_error(r)
    assert sha(leaky_qcow2) == before
