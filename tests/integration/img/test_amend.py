"""ferry img amend: the options qemu-img info shows afterwards are the ones
asked for, the image stays valid, and refusals match qemu-img amend."""
import pytest

from imgutil import assert_same, need_driver_op, need_ferry_qcow2, one_line_error, qcow2, qemu_io, sha, sparse_raw

MiB = 1 << 20


def test_amend_raw_like_qemu(ferry, qemu_img, tmp_path):
    img = sparse_raw(tmp_path / "a.raw", MiB, [])
    before = sha(img)
    for args in (["-f", "raw", "-o", "size=2M", img], ["-f", "raw", img]):
        o, _ = assert_same(ferry, qemu_img, "amend", *args, stdout=False)
        assert o.rc == 1
        one_line_error(o)
    assert sha(img) == before


@pytest.mark.parametrize("opts,key,value", [
    ("lazy_refcounts=on", "lazy-refcounts", True),
    ("compat=0.10", "compat", "0.10"),
    ("refcount_bits=64", "refcount-bits", 64),
])
def test_amend_qcow2_like_qemu(ferry, qemu_img, tmp_path, opts, key, value):
    need_ferry_qcow2(tmp_path)
    need_driver_op(tmp_path, "amend", "amend", "-o", "lazy_refcounts=off", "SCRATCH")
    img = qcow2(qemu_img, tmp_path / "a.qcow2", "16M")
    qemu_io(img, "qcow2", "write -P 1 0 1M")
    theirs = tmp_path / "b.qcow2"
    theirs.write_bytes(img.read_bytes())
    o = ferry("img", "amend", "-o", opts, img, check=False)
    t = qemu_img("amend", "-o", opts, theirs, check=False)
    assert (o.rc, o.out) == (t.rc, t.out) == (0, "")
    info = qemu_img("info", "--output=json", img).json()["format-specific"]["data"]
    assert info[key] == value
    assert qemu_img("check", img).rc == 0
    assert qemu_img("compare", img, theirs).rc == 0


def test_amend_qcow2_refusals(ferry, qemu_img, tmp_path):
    need_ferry_qcow2(tmp_path)
    need_driver_op(tmp_path, "amend", "amend", "-o", "lazy_refcounts=off", "SCRATCH")
    img = qcow2(qemu_img, tmp_path / "a.qcow2", "16M")
    before = sha(img)
    for opts in ("cluster_size=4k", "nosuch=1"):
        o, _ = assert_same(ferry, qemu_img, "amend", "-o", opts, img, stdout=False)
        assert o.rc == 1
        one_line_error(o)
    assert sha(img) == before
