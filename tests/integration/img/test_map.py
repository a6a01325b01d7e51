"""ferry img map against qemu-img map: same bytes on stdout, same exit code."""
import pytest

from imgutil import (assert_same, need_ferry_qcow2, one_line_error, qcow2,
                     qemu_io, sha, sparse_raw, write_qcow2_shared)

MiB = 1 << 20


@pytest.fixture
def raw_img(tmp_path):
    # data, holes, a zeroed range and an unaligned write
    return sparse_raw(tmp_path / "sparse.raw", 16 * MiB, [
        (1 * MiB, 64 * 1024, 0x11),
        (3 * MiB, MiB, 0x22),
        (5 * MiB, 64 * 1024, 0),
        (9 * MiB + 4096, 12288, 0x33),
        (16 * MiB - 4096, 4096, 0x44),
    ])


@pytest.mark.parametrize("output", ["json", "human"])
def test_map_matches_qemu_on_sparse_raw(ferry, qemu_img, raw_img, output):
    before = sha(raw_img)
    ours, _ = assert_same(ferry, qemu_img, "map", "-f", "raw",
                          "--output=" + output, raw_img)
    assert ours.rc == 0
    assert sha(raw_img) == before, "map changed the image"
    if output == "json":
        entries = ours.json()
        assert sum(e["length"] for e in entries) == 16 * MiB
        assert any(e["data"] for e in entries) and any(e["zero"] for e in entries)


@pytest.mark.parametrize("start,length", [
    ("1M", "3M"), ("0", "1"), ("3M", "100G"), ("20M", None), ("9M", "4k"),
])
def test_map_window_matches_qemu(ferry, qemu_img, raw_img, start, length):
    args = ["map", "-f", "raw", "--output=json", "--start-offset=" + start]
    if length:
        args.append("--max-length=" + length)
    assert_same(ferry, qemu_img, *args, raw_img)


def test_map_empty_image_matches_qemu(ferry, qemu_img, tmp_path):
    img = sparse_raw(tmp_path / "empty.raw", 0, [])
    for output in ("json", "human"):
        assert_same(ferry, qemu_img, "map", "-f", "raw", "--output=" + output, img)


def test_map_null_co_matches_qemu(ferry, qemu_img):
    spec = "driver=null-co,size=1M,read-zeroes=on"
    for output in ("json", "human"):
        assert_same(ferry, qemu_img, "map", "--image-opts", "--output=" + output, spec)


def test_map_bad_input_is_one_line(ferry, tmp_path):
    r = ferry("img", "map", tmp_path / "missing.raw", check=False)
    assert r.rc == 1
    one_line_error(r)
    r = ferry("img", "map", "--start-offset=-1", tmp_path / "x", check=False)
    assert r.rc == 1
    one_line_error(r)
    r = ferry("img", "map", "--output=xml", tmp_path / "x", check=False)
    assert r.rc == 1
    one_line_error(r)


def test_map_qcow2_chain_matches_qemu(ferry, qemu_img, tmp_path):
    need_ferry_qcow2(tmp_path)
    base = qcow2(qemu_img, tmp_path / "base.qcow2")
    qemu_io(base, "qcow2", "write -P 1 0 128k", "write -z 1M 64k",
            "write -P 2 2M 64k", "write -P 3 60M 1M")
    mid = qcow2(qemu_img, tmp_path / "mid.qcow2", None, backing=base)
    qemu_io(mid, "qcow2", "write -P 4 64k 64k", "write -z 2M 32k",
            "discard 60M 64k")
    top = qcow2(qemu_img, tmp_path / "top.qcow2", "80M", backing=mid)
    qemu_io(top, "qcow2", "write -P 5 1M 4k", "write -P 6 70M 64k")
    for img in (base, mid, top):
        before = sha(img)
        for output in ("json", "human"):
            assert_same(ferry, qemu_img, "map", "--output=" + output, img)
        assert sha(img) == before


def test_map_qcow2_extended_l2_and_compressed(ferry, qemu_img, tmp_path):
    need_ferry_qcow2(tmp_path)
    img = qcow2(qemu_img, tmp_path / "sub.qcow2", "8M", "extended_l2=on")
    qemu_io(img, "qcow2", "write -P 1 0 4k", "write -P 2 40k 8k",
            "write -z 1M 32k", "write -c -P 3 2M 64k")
    # compressed clusters have no offset: the human form refuses them, as qemu-img
    assert_same(ferry, qemu_img, "map", "--output=json", img)
    ours, _ = assert_same(ferry, qemu_img, "map", img, stdout=False)
    assert ours.rc == 1


def test_map_1tib_sparse_qcow2_10k_clusters(ferry, qemu_img, tmp_path):
    """10,000 allocated clusters in 20 L2 tables spread over 1 TiB: the same
    20,000 extents as qemu-img (bench/img-cmds.py times it)."""
    need_ferry_qcow2(tmp_path)
    cs, l2_cover = 65536, 65536 * 8192
    offsets = [r * ((1 << 40) // 20) // l2_cover * l2_cover + 2 * k * cs
               for r in range(20) for k in range(500)]
    img = write_qcow2_shared(tmp_path / "big.qcow2", 1 << 40, offsets)
    assert qemu_img("check", img).rc == 0
    ours, _ = assert_same(ferry, qemu_img, "map", "--output=json", img)
    assert sum(1 for e in ours.json() if e["data"]) == 10000
    assert_same(ferry, qemu_img, "map", img)
