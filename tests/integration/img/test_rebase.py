"""ferry img rebase against qemu-img rebase: the overlay reads the same
before and after, the header names the new backing file."""
import shutil

import pytest

from imgutil import assert_same, need_ferry_qcow2, one_line_error, qcow2, qemu_io, sparse_raw

MiB = 1 << 20


def test_rebase_refusals_on_raw_like_qemu(ferry, qemu_img, tmp_path):
    img = sparse_raw(tmp_path / "a.raw", MiB, [(0, 4096, 1)])
    before = img.read_bytes()
    for args in (["-f", "raw", "-b", "x", "-F", "raw", img], ["-f", "raw", "-u", "-b", "", img],
                 ["-f", "raw", img]):
        o, _ = assert_same(ferry, qemu_img, "rebase", *args)
        assert o.rc == 1
        one_line_error(o)
    assert img.read_bytes() == before


@pytest.fixture
def images(qemu_img, tmp_path):
    need_ferry_qcow2(tmp_path)
    d = tmp_path / "imgs"
    d.mkdir()
    old = qcow2(qemu_img, d / "old.qcow2", "8M")
    qemu_io(old, "qcow2", "write -P 1 0 2M", "write -z 4M 64k", "write -P 2 6M 512")
    new = qcow2(qemu_img, d / "new.qcow2", "6M")
    qemu_io(new, "qcow2", "write -P 1 0 1M", "write -P 3 1M 64k", "write -P 4 4M 64k")
    top = qcow2(qemu_img, d / "top.qcow2", None, backing="old.qcow2")
    qemu_io(top, "qcow2", "write -P 9 1M 4k")
    return d


def alone(img):
    """The overlay without its backing file, as --image-opts options."""
    return "driver=qcow2,file.filename=%s,backing=" % img


def flat(qemu_img, img, out):
    qemu_img("convert", "-O", "raw", img, out)
    return out


@pytest.mark.parametrize("target", ["new.qcow2", ""])
def test_rebase_safe_like_qemu(ferry, qemu_img, images, tmp_path, target):
    theirs = tmp_path / "theirs"
    shutil.copytree(images, theirs)
    before = flat(qemu_img, images / "top.qcow2", tmp_path / "before.raw")
    fmt = ["-F", "qcow2"] if target else []
    o = ferry("img", "rebase", "-b", target, *fmt, images / "top.qcow2", check=False)
    t = qemu_img("rebase", "-b", target, *fmt, theirs / "top.qcow2", check=False)
    assert o.rc == t.rc == 0, o
    assert o.out == t.out
    assert qemu_img("check", images / "top.qcow2").rc == 0
    assert qemu_img("compare", images / "top.qcow2", before).rc == 0
    oi = qemu_img("info", "--output=json", images / "top.qcow2").json()
    ti = qemu_img("info", "--output=json", theirs / "top.qcow2").json()
    assert oi.get("backing-filename") == ti.get("backing-filename")
    assert oi.get("backing-filename-format") == ti.get("backing-filename-format")
    # what got copied into the overlay itself is what qemu-img copied
    assert qemu_img("compare", "--image-opts", alone(images / "top.qcow2"),
                    alone(theirs / "top.qcow2")).rc == 0


def test_rebase_unsafe_only_rewrites_header(ferry, qemu_img, images):
    top = images / "top.qcow2"
    map_before = qemu_img("map", "--output=json", "--image-opts", alone(top)).out
    ferry("img", "rebase", "-u", "-b", "new.qcow2", "-F", "qcow2", top)
    info = qemu_img("info", "--output=json", top).json()
    assert info["backing-filename"] == "new.qcow2"
    assert qemu_img("map", "--output=json", "--image-opts", alone(top)).out == map_before
    # -u fixes a name that no longer opens
    ferry("img", "rebase", "-u", "-b", "gone.qcow2", "-F", "qcow2", top)
    ferry("img", "rebase", "-u", "-b", "old.qcow2", "-F", "qcow2", top)
    assert qemu_img("info", "--output=json", top).json()["backing-filename"] == "old.qcow2"


def test_rebase_needs_backing_format(ferry, qemu_img, images):
    top = images / "top.qcow2"
    before = top.read_bytes()
    o, _ = assert_same(ferry, qemu_img, "rebase", "-u", "-b", "new.qcow2", top)
    assert o.rc == 1
    assert "backing format must be specified" in o.err
    assert top.read_bytes() == before


def test_rebase_onto_base_in_chain(ferry, qemu_img, images, tmp_path):
    """top <- mid <- old: rebasing top onto old copies only mid's data."""
    mid = qcow2(qemu_img, images / "mid.qcow2", None, backing="old.qcow2")
    qemu_io(mid, "qcow2", "write -P 7 3M 128k")
    top2 = qcow2(qemu_img, images / "top2.qcow2", None, backing="mid.qcow2")
    before = flat(qemu_img, top2, tmp_path / "before.raw")
    ferry("img", "rebase", "-b", "old.qcow2", "-F", "qcow2", top2)
    assert qemu_img("compare", top2, before).rc == 0
    allocated = [e for e in qemu_img("map", "--output=json", top2).json()
                 if e["depth"] == 0 and e["data"]]
    assert sum(e["length"] for e in allocated) == 128 * 1024


def test_rebase_compressed(ferry, qemu_img, images, tmp_path):
    top = images / "top.qcow2"
    before = flat(qemu_img, top, tmp_path / "before.raw")
    ferry("img", "rebase", "-c", "-b", "new.qcow2", "-F", "qcow2", top)
    assert qemu_img("compare", top, before).rc == 0
    assert qemu_img("check", "--output=json", top).json().get("compressed-clusters", 0) > 0


@pytest.mark.parametrize("compat", ["1.1", "0.10"])
def test_rebase_standalone_image_keeps_its_zeroes(ferry, qemu_img, images, tmp_path,
                                                  compat):
    """An image without a backing file rebased onto one: where it read zeroes
    it must go on reading zeroes.  (qemu-img 7.2 gets this wrong for compat=0.10:
    its zero writes vanish and the new backing file shows through.)"""
    solo = qcow2(qemu_img, images / "solo.qcow2", "8M", "compat=" + compat)
    qemu_io(solo, "qcow2", "write -P 4 0 64k")
    back = qcow2(qemu_img, images / "back.qcow2", "8M")
    qemu_io(back, "qcow2", "write -P 1 0 3M", "write -P 2 6M 64k")
    before = flat(qemu_img, solo, tmp_path / "before.raw")
    ferry("img", "rebase", "-b", "back.qcow2", "-F", "qcow2", solo)
    assert qemu_img("compare", solo, before).rc == 0
    assert qemu_img("check", solo).rc == 0
    assert qemu_img("info", "--output=json", solo).json()["backing-filename"] == "back.qcow2"
    if compat == "1.1":
        theirs = qcow2(qemu_img, tmp_path / "theirs.qcow2", "8M")
        qemu_io(theirs, "qcow2", "write -P 4 0 64k")
        shutil.copy(back, tmp_path / "back.qcow2")
        qemu_img("rebase", "-b", "back.qcow2", "-F", "qcow2", theirs)
        # the same zero clusters qemu-img writes
        assert (qemu_img("map", "--output=json", "--image-opts", alone(solo)).out ==
                qemu_img("map", "--output=json", "--image-opts", alone(theirs)).out)


def test_rebase_progress(ferry, qemu_img, images):
    import json
    top = images / "top.qcow2"
    r = ferry("img", "rebase", "--progress=json", "-b", "new.qcow2", "-F", "qcow2", top)
    lines = [json.loads(l) for l in r.err.splitlines() if l.startswith("{")]
    assert lines[0]["operation"] == "rebase" and lines[0]["percent"] == 0.0
    assert lines[-1]["final"] and lines[-1]["percent"] == 100.0
    r = ferry("img", "rebase", "-p", "-b", "old.qcow2", "-F", "qcow2", top)
    assert "(100.00/100%)" in r.out
    r = ferry("img", "rebase", "-q", "-p", "-b", "new.qcow2", "-F", "qcow2", top)
    assert r.out == ""
