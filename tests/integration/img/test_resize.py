"""ferry img resize against qemu-img resize: same rules, same results."""
import os

import pytest

from imgutil import assert_same, need_ferry_qcow2, one_line_error, qcow2, qemu_io, sparse_raw

MiB = 1 << 20


def twin(tmp_path, name, size=8 * MiB):
    ours = sparse_raw(tmp_path / ("ours-" + name), size, [(0, 4096, 1), (size - 4096, 4096, 2)])
    theirs = sparse_raw(tmp_path / ("theirs-" + name), size, [(0, 4096, 1), (size - 4096, 4096, 2)])
    return ours, theirs


@pytest.mark.parametrize("args,new_size", [
    (["10M"], 10 * MiB), (["+1M"], 9 * MiB), (["--shrink", "4M"], 4 * MiB),
    (["--shrink", "-2M"], 6 * MiB), (["8M"], 8 * MiB), (["+0"], 8 * MiB),
    (["--preallocation=falloc", "+4M"], 12 * MiB),
])
def test_resize_raw_like_qemu(ferry, qemu_img, tmp_path, args, new_size):
    ours, theirs = twin(tmp_path, "r.raw")
    o = ferry("img", "resize", "-f", "raw", ours, *args, check=False)
    t = qemu_img("resize", "-f", "raw", theirs, *args, check=False)
    assert (o.rc, o.out) == (t.rc, t.out) == (0, "Image resized.\n")
    assert os.path.getsize(ours) == os.path.getsize(theirs) == new_size
    assert qemu_img("compare", ours, theirs).rc == 0


@pytest.mark.parametrize("args", [
    ["4M"], ["-1M"], ["0"], ["--shrink", "-8M"], ["--preallocation=full", "8M"],
    ["--preallocation=full", "--shrink", "4M"], ["--preallocation=bogus", "9M"],
    ["9Q"],
])
def test_resize_refusals_like_qemu(ferry, qemu_img, tmp_path, args):
    ours, theirs = twin(tmp_path, "r.raw")
    o = ferry("img", "resize", "-f", "raw", ours, *args, check=False)
    t = qemu_img("resize", "-f", "raw", theirs, *args, check=False)
    assert o.rc == t.rc == 1
    assert o.out == t.out == ""
    assert os.path.getsize(ours) == 8 * MiB
    assert o.err.startswith("ferry img")


def test_resize_shrink_message_names_the_option(ferry, tmp_path):
    ours, _ = twin(tmp_path, "r.raw")
    r = ferry("img", "resize", "-f", "raw", ours, "4M", check=False)
    assert "--shrink" in r.err


def test_resize_quiet_and_full_prealloc(ferry, tmp_path):
    ours, _ = twin(tmp_path, "r.raw")
    r = ferry("img", "resize", "-q", "-f", "raw", "--preallocation=full", ours, "+8M")
    assert r.out == ""
    assert os.stat(ours).st_blocks * 512 >= 8 * MiB


def test_resize_missing_size(ferry, tmp_path):
    r = ferry("img", "resize", tmp_path / "x", check=False)
    assert r.rc == 1
    one_line_error(r)


@pytest.mark.parametrize("args", [["+100M"], ["--shrink", "32M"], ["1G"]])
def test_resize_qcow2_like_qemu(ferry, qemu_img, tmp_path, args):
    need_ferry_qcow2(tmp_path)
    ours = qcow2(qemu_img, tmp_path / "ours.qcow2")
    qemu_io(ours, "qcow2", "write -P 1 0 1M", "write -P 2 20M 64k")
    theirs = tmp_path / "theirs.qcow2"
    theirs.write_bytes(ours.read_bytes())
    o = ferry("img", "resize", ours, *args, check=False)
    t = qemu_img("resize", theirs, *args, check=False)
    assert (o.rc, o.out) == (t.rc, t.out)
    oi = qemu_img("info", "--output=json", ours).json()
    ti = qemu_img("info", "--output=json", theirs).json()
    assert oi["virtual-size"] == ti["virtual-size"]
    assert qemu_img("check", ours).rc == 0
    assert qemu_img("compare", ours, theirs).rc == 0
