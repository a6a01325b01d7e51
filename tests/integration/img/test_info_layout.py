"""ferry img info prints what qemu-img info prints, byte for byte, for the
images scripts meet most: raw, qcow2 v2/v3, and a backing chain."""
import pytest

from imgutil import assert_same, need_ferry_qcow2, qcow2, qemu_io, sparse_raw


def test_info_raw_bytes_match_qemu(ferry, qemu_img, tmp_path):
    img = sparse_raw(tmp_path / "a.raw", 10 << 20, [(1 << 20, 4096, 1)])
    for output in ("human", "json"):
        assert_same(ferry, qemu_img, "info", "--output=" + output, img)


@pytest.mark.parametrize("opts", [[], ["compat=0.10"], ["lazy_refcounts=on"],
                                  ["extended_l2=on", "cluster_size=128k"]])
def test_info_qcow2_bytes_match_qemu(ferry, qemu_img, tmp_path, opts):
    need_ferry_qcow2(tmp_path)
    img = qcow2(qemu_img, tmp_path / "a.qcow2", "64M", *opts)
    qemu_io(img, "qcow2", "write -P 1 0 1M")
    for output in ("human", "json"):
        assert_same(ferry, qemu_img, "info", "--output=" + output, img)


def test_info_backing_chain_bytes_match_qemu(ferry, qemu_img, tmp_path):
    need_ferry_qcow2(tmp_path)
    base = qcow2(qemu_img, tmp_path / "base.qcow2", "64M")
    top = qcow2(qemu_img, tmp_path / "top.qcow2", None, backing="base.qcow2")
    for args in (["--output=json"], ["--backing-chain"],
                 ["--backing-chain", "--output=json"]):
        assert_same(ferry, qemu_img, "info", *args, top)
