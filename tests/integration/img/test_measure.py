"""ferry img measure against qemu-img measure: same figures, same text."""
import pytest

from imgutil import (assert_same, need_driver_op, need_ferry_qcow2, qcow2, qemu_io,
                     sha, sparse_raw)

MiB = 1 << 20


@pytest.mark.parametrize("args", [
    ["--size", "1000"], ["--size", "1G"], ["--size", "1G", "--output=json"],
    ["-O", "raw", "-o", "preallocation=full", "--size", "3M"],
    ["--output=json", "--size", "0"],
])
def test_measure_raw_size_like_qemu(ferry, qemu_img, args):
    ours, _ = assert_same(ferry, qemu_img, "measure", *args)
    assert ours.rc == 0


def test_measure_raw_file_like_qemu(ferry, qemu_img, tmp_path):
    img = sparse_raw(tmp_path / "a.raw", 10 * MiB, [(MiB, MiB, 3)])
    before = sha(img)
    for args in (["-f", "raw", img], ["--output=json", img], ["-O", "raw", img]):
        ours, _ = assert_same(ferry, qemu_img, "measure", *args)
        assert ours.rc == 0
    assert sha(img) == before


@pytest.mark.parametrize("args", [
    [], ["--size", "1G", "FILE"], ["-f", "raw"], ["-O", "nosuch", "--size", "1M"],
    ["-O", "raw", "-o", "cluster_size=4k", "--size", "1M"], ["FILE", "FILE"],
])
def test_measure_refusals_like_qemu(ferry, qemu_img, tmp_path, args):
    img = sparse_raw(tmp_path / "a.raw", MiB, [])
    args = [img if a == "FILE" else a for a in args]
    ours, _ = assert_same(ferry, qemu_img, "measure", *args)
    assert ours.rc == 1
    assert ours.err.startswith("ferry img")


@pytest.mark.parametrize("opts", [
    [], ["-o", "cluster_size=4k"], ["-o", "cluster_size=2M"],
    ["-o", "refcount_bits=1"], ["-o", "refcount_bits=64,cluster_size=512"],
    ["-o", "extended_l2=on"], ["-o", "extended_l2=on,cluster_size=16k"],
    ["-o", "preallocation=metadata"], ["-o", "preallocation=full"],
    ["-o", "compat=0.10"],
])
@pytest.mark.parametrize("size", ["64M", "1T", "1000"])
def test_measure_qcow2_size_like_qemu(ferry, qemu_img, tmp_path, opts, size):
    need_ferry_qcow2(tmp_path)
    assert_same(ferry, qemu_img, "measure", "-O", "qcow2", "--size", size, *opts)


@pytest.mark.parametrize("opts", [[], ["-o", "cluster_size=4k"],
                                  ["-o", "extended_l2=on"]])
def test_measure_qcow2_from_image_like_qemu(ferry, qemu_img, tmp_path, opts):
    need_ferry_qcow2(tmp_path)
    src = qcow2(qemu_img, tmp_path / "src.qcow2", "256M")
    qemu_io(src, "qcow2", "write -P 1 0 3M", "write -P 2 100M 64k", "write -z 50M 1M")
    raw = sparse_raw(tmp_path / "src.raw", 64 * MiB, [(MiB, 5 * MiB, 1)])
    for img in (src, raw):
        for output in ("human", "json"):
            assert_same(ferry, qemu_img, "measure", "-O", "qcow2",
                        "--output=" + output, img, *opts)


def test_measure_counts_source_bitmaps_like_qemu(ferry, qemu_img, tmp_path):
    need_ferry_qcow2(tmp_path)
    need_driver_op(tmp_path, "measuring bitmaps (the driver loads them)",
                   "bitmap", "--add", "SCRATCH", "probe")
    src = qcow2(qemu_img, tmp_path / "src.qcow2", "1G")
    qemu_img("bitmap", "--add", src, "b0")
    qemu_img("bitmap", "--add", "-g", "512", src, "a_longer_bitmap_name")
    for output in ("human", "json"):
        for opts in ([], ["-o", "cluster_size=4k"]):
            assert_same(ferry, qemu_img, "measure", "-O", "qcow2",
                        "--output=" + output, src, *opts)
