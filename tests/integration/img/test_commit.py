"""ferry img commit: the chain reads the same afterwards, the base holds the
data, and qemu-img check and compare agree; qemu-img commit is the judge."""
import shutil

import pytest

from imgutil import assert_same, need_ferry_qcow2, one_line_error, qcow2, qemu_io, sparse_raw

MiB = 1 << 20


def test_commit_needs_a_backing_file(ferry, qemu_img, tmp_path):
    img = sparse_raw(tmp_path / "a.raw", MiB, [])
    ours, _ = assert_same(ferry, qemu_img, "commit", "-f", "raw", img)
    assert ours.rc == 1
    one_line_error(ours)
    ours, _ = assert_same(ferry, qemu_img, "commit", "-f", "raw", "-b", "x", img)
    assert ours.rc == 1


@pytest.fixture
def chain(qemu_img, tmp_path):
    """base <- mid <- top, with data at every level and a zeroed range."""
    need_ferry_qcow2(tmp_path)
    d = tmp_path / "chain"
    d.mkdir()
    base = qcow2(qemu_img, d / "base.qcow2", "16M")
    qemu_io(base, "qcow2", "write -P 1 0 4M", "write -P 2 8M 1M")
    mid = qcow2(qemu_img, d / "mid.qcow2", None, backing="base.qcow2")
    qemu_io(mid, "qcow2", "write -P 3 1M 64k", "write -P 4 12M 128k")
    top = qcow2(qemu_img, d / "top.qcow2", None, backing="mid.qcow2")
    qemu_io(top, "qcow2", "write -P 5 64k 4k", "write -z 2M 1M", "write -P 6 15M 1M")
    return d


def flat(qemu_img, img, out):
    qemu_img("convert", "-O", "raw", img, out)
    return out


def twin_chain(chain, tmp_path):
    other = tmp_path / "theirs"
    shutil.copytree(chain, other)
    return other


@pytest.mark.parametrize("args", [[], ["-d"], ["-b", "base.qcow2"], ["-p"],
                                  ["-q", "-r", "100M"]])
def test_commit_like_qemu(ferry, qemu_img, chain, tmp_path, args):
    theirs = twin_chain(chain, tmp_path)
    before = flat(qemu_img, chain / "top.qcow2", tmp_path / "before.raw")
    cwd_args = [a if a != "base.qcow2" else str(chain / "base.qcow2") for a in args]
    o = ferry("img", "commit", *cwd_args, chain / "top.qcow2", check=False)
    cwd_args = [a if a != "base.qcow2" else str(theirs / "base.qcow2") for a in args]
    t = qemu_img("commit", *cwd_args, theirs / "top.qcow2", check=False)
    assert o.rc == t.rc == 0, o
    assert o.out.splitlines()[-1:] == t.out.splitlines()[-1:]
    for name in ("base", "mid", "top"):
        assert qemu_img("check", chain / (name + ".qcow2")).rc == 0
        # every layer reads what qemu-img's commit left in it
        assert qemu_img("compare", chain / (name + ".qcow2"),
                        theirs / (name + ".qcow2")).rc == 0, name
    # the overlay still reads what it read before
    assert qemu_img("compare", chain / "top.qcow2", before).rc == 0
    if not args or args == ["-p"] or args[0] == "-q":
        # emptied: nothing allocated in the overlay any more
        assert not [e for e in qemu_img("map", "--output=json", chain / "top.qcow2").json()
                    if e["depth"] == 0 and e["present"]]


def test_commit_base_not_in_chain(ferry, qemu_img, chain, tmp_path):
    other = qcow2(qemu_img, tmp_path / "other.qcow2", "16M")
    o, t = assert_same(ferry, qemu_img, "commit", "-b", other, chain / "top.qcow2",
                       stdout=False)
    assert o.rc == 1
    one_line_error(o)


def test_commit_progress_json(ferry, chain):
    import json
    r = ferry("img", "commit", "--progress=json", "-d", chain / "top.qcow2")
    lines = [json.loads(l) for l in r.err.splitlines() if l.startswith("{")]
    assert lines[-1]["final"] and lines[-1]["percent"] == 100.0
    assert r.out == "Image committed.\n"
