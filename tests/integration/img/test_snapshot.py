"""ferry img snapshot against qemu-img snapshot: the -l table byte for byte,
create/apply/delete seen the same way by both tools."""
import pytest

from imgutil import assert_same, need_driver_op, need_ferry_qcow2, one_line_error, qcow2, qemu_io, sha, sparse_raw

MiB = 1 << 20


def test_snapshot_raw_like_qemu(ferry, qemu_img, tmp_path):
    img = sparse_raw(tmp_path / "a.raw", MiB, [(0, 4096, 1)])
    before = sha(img)
    o, _ = assert_same(ferry, qemu_img, "snapshot", "-l", img)
    assert o.rc == 0 and o.out == ""
    for flag in ("-c", "-a", "-d"):
        o, _ = assert_same(ferry, qemu_img, "snapshot", flag, "s1", img, stdout=False)
        assert o.rc == 1
        one_line_error(o)
    o, _ = assert_same(ferry, qemu_img, "snapshot", "-l", "-c", "x", img, stdout=False)
    assert o.rc == 1
    assert sha(img) == before


@pytest.fixture
def snapped(qemu_img, tmp_path):
    need_ferry_qcow2(tmp_path)
    need_driver_op(tmp_path, "snapshot -l", "snapshot", "-l", "SCRATCH")
    need_driver_op(tmp_path, "snapshot -c", "snapshot", "-c", "probe", "SCRATCH")
    img = qcow2(qemu_img, tmp_path / "s.qcow2", "8M")
    qemu_io(img, "qcow2", "write -P 1 0 1M")
    qemu_img("snapshot", "-c", "first", img)
    qemu_io(img, "qcow2", "write -P 2 0 64k")
    qemu_img("snapshot", "-c", "a_much_longer_snapshot_name_than_the_column", img)
    qemu_io(img, "qcow2", "write -P 3 0 4k")
    return img


def test_snapshot_list_table_is_qemus(ferry, qemu_img, snapped):
    before = sha(snapped)
    o, _ = assert_same(ferry, qemu_img, "snapshot", "-l", snapped)
    assert o.out.startswith("Snapshot list:\nID        TAG")
    assert sha(snapped) == before
    # and info shows the same table in its human form
    o, t = assert_same(ferry, qemu_img, "info", snapped, stdout=False)
    table = lambda s: s.split("Snapshot list:\n")[1].split("Format specific")[0]
    assert table(o.out) == table(t.out)


def test_snapshot_create_apply_delete_seen_by_qemu(ferry, qemu_img, snapped, tmp_path):
    ferry("img", "snapshot", "-c", "ours", snapped)
    names = [s["name"] for s in qemu_img("info", "--output=json", snapped).json()["snapshots"]]
    assert names[-1] == "ours"
    assert qemu_img("check", snapped).rc == 0
    qemu_io(snapped, "qcow2", "write -P 4 0 1M")
    ferry("img", "snapshot", "-a", "first", snapped)
    r = qemu_io_read(snapped, "read -P 1 0 1M")
    assert "Pattern verification failed" not in r
    ferry("img", "snapshot", "-a", "ours", snapped)
    assert "Pattern verification failed" not in qemu_io_read(snapped, "read -P 3 0 4k")
    ferry("img", "snapshot", "-d", "first", snapped)
    # qemu-img 7.2 deletes by name only: an ID is "not found", in both tools
    assert_same(ferry, qemu_img, "snapshot", "-d", "2", snapped, stdout=False)
    assert ferry("img", "snapshot", "-d", "2", snapped, check=False).rc == 1
    ferry("img", "snapshot", "-d", "a_much_longer_snapshot_name_than_the_column", snapped)
    names = [s["name"] for s in qemu_img("info", "--output=json", snapped).json()["snapshots"]]
    assert names == ["ours"]
    assert qemu_img("check", snapped).rc == 0
    o, _ = assert_same(ferry, qemu_img, "snapshot", "-l", snapped)


def test_snapshot_missing_like_qemu(ferry, qemu_img, snapped):
    before = sha(snapped)
    for flag in ("-a", "-d"):
        o, _ = assert_same(ferry, qemu_img, "snapshot", flag, "nosuch", snapped, stdout=False)
        assert o.rc == 1
        one_line_error(o)
    assert sha(snapped) == before


def qemu_io_read(img, cmd):
    import subprocess
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", cmd, str(img)],
                          capture_output=True, text=True).stdout
