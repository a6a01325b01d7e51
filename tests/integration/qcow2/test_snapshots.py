"""Internal snapshots against Debian's qemu-img, both directions.

Snapshots ferry makes are listed, read (qemu-img convert -l), applied and
deleted correctly by qemu-img, and pass qemu-img check; snapshots qemu-img
makes are listed, applied and deleted by ferry the same way.  `snapshot -l`
and `info` print what qemu-img prints, byte for byte.
"""
import hashlib
import os
import shutil

import pytest

from conftest import need

MiB = 1 << 20

# (id, qemu-img create options): formats the snapshot code must get right
CONFIGS = [
    ("v3", "compat=1.1"),
    ("v2", "compat=0.10"),
    ("c512", "cluster_size=512"),
    ("rc8", "refcount_bits=8"),
    ("extl2", "extended_l2=on"),
    ("lazy", "lazy_refcounts=on"),
]


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def raw_of(qemu_img, img, out, snapshot=None):
    """The guest bytes of img (or of one of its snapshots), as raw."""
    args = ["convert", "-O", "raw"]
    if snapshot:
        args += ["-l", "snapshot.name=" + snapshot]
    qemu_img(*args, img, out)
    return digest(out)


def qemu_checks_clean(qemu_img, img):
    res = qemu_img("check", img, check=False)
    assert res.rc == 0, res


def make(qemu_img, path, opts, size="8M"):
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, path, size)
    return path


@pytest.mark.parametrize("cid,opts", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_ferry_snapshots_seen_by_qemu(ferry, qemu_img, tmp_path, cid, opts):
    img = make(qemu_img, tmp_path / "a.qcow2", opts)
    states = {}
    ferry("io", "-c", "write -P 0x11 0 1M", "-c", "write -c -P 0x12 2M 128k"
          if cid != "v2" else "write -P 0x12 2M 128k", img)
    states["one"] = raw_of(qemu_img, img, tmp_path / "one.raw")
    ferry("img", "snapshot", "-c", "one", img)
    ferry("io", "-c", "write -P 0x21 64k 64k", "-c", "write -z 2M 64k",
          "-c", "write -P 0x22 5M 1M", img)
    states["two"] = raw_of(qemu_img, img, tmp_path / "two.raw")
    ferry("img", "snapshot", "-c", "two", img)
    ferry("io", "-c", "write -P 0x31 0 4k", "-c", "discard 5M 1M", img)
    states["now"] = raw_of(qemu_img, img, tmp_path / "now.raw")
    qemu_checks_clean(qemu_img, img)
    # the tables print the same, and qemu-img reads each snapshot's data
    assert ferry("img", "snapshot", "-l", img).out == \
        qemu_img("snapshot", "-l", img).out
    for name in ("one", "two"):
        assert raw_of(qemu_img, img, tmp_path / "x.raw", name) == states[name]
    # qemu-img applies and deletes what ferry made
    theirs = tmp_path / "theirs.qcow2"
    shutil.copy(img, theirs)
    qemu_img("snapshot", "-a", "one", theirs)
    assert raw_of(qemu_img, theirs, tmp_path / "t.raw") == states["one"]
    qemu_img("snapshot", "-d", "one", theirs)
    qemu_checks_clean(qemu_img, theirs)
    # and ferry does the same to its own image
    ferry("img", "snapshot", "-a", "two", img)
    assert raw_of(qemu_img, img, tmp_path / "t.raw") == states["two"]
    qemu_checks_clean(qemu_img, img)
    ferry("img", "snapshot", "-d", "two", img)
    ferry("img", "snapshot", "-d", "one", img)
    assert ferry("img", "snapshot", "-l", img).out == ""
    assert raw_of(qemu_img, img, tmp_path / "t.raw") == states["two"]
    qemu_checks_clean(qemu_img, img)
    res = ferry("img", "check", "--output=json", img).json()
    assert res.get("leaks", 0) == 0 and res.get("corruptions", 0) == 0


@pytest.mark.parametrize("cid,opts", CONFIGS[:3], ids=[c[0] for c in CONFIGS[:3]])
def test_qemu_snapshots_applied_by_ferry(ferry, qemu_img, qemu_io, tmp_path, cid, opts):
    img = make(qemu_img, tmp_path / "q.qcow2", opts)
    qemu_io("-f", "qcow2", "-c", "write -P 0x41 0 2M", img)
    ref1 = raw_of(qemu_img, img, tmp_path / "1.raw")
    qemu_img("snapshot", "-c", "s1", img)
    qemu_io("-f", "qcow2", "-c", "write -P 0x42 1M 2M", "-c", "write -z 0 64k", img)
    ref2 = raw_of(qemu_img, img, tmp_path / "2.raw")
    qemu_img("snapshot", "-c", "s2", img)
    qemu_io("-f", "qcow2", "-c", "write -P 0x43 7M 1M", img)
    assert ferry("img", "snapshot", "-l", img).out == \
        qemu_img("snapshot", "-l", img).out
    ferry("img", "snapshot", "-a", "s1", img)
    assert raw_of(qemu_img, img, tmp_path / "t.raw") == ref1
    res = ferry("io", "-c", "read -P 0x41 0 2M", img)
    assert "Pattern verification failed" not in res.out
    qemu_checks_clean(qemu_img, img)
    ferry("img", "snapshot", "-a", "2", img)       # -a takes an ID too
    assert raw_of(qemu_img, img, tmp_path / "t.raw") == ref2
    ferry("img", "snapshot", "-d", "s1", img)
    qemu_checks_clean(qemu_img, img)
    assert raw_of(qemu_img, img, tmp_path / "x.raw", "s2") == ref2
    ferry("img", "snapshot", "-d", "s2", img)
    qemu_checks_clean(qemu_img, img)
    assert qemu_img("snapshot", "-l", img).out == ""


def test_info_with_snapshots_matches_qemu(ferry, qemu_img, tmp_path):
    img = make(qemu_img, tmp_path / "i.qcow2", "cluster_size=4k")
    ferry("io", "-c", "write -P 1 0 64k", img)
    ferry("img", "snapshot", "-c", "ferry-made", img)
    qemu_img("snapshot", "-c", "qemu-made", img)
    ferry("img", "snapshot", "-c", "a_snapshot_name_longer_than_its_column", img)
    for args in (["info", img], ["info", "--output=json", img],
                 ["snapshot", "-l", img]):
        ours, theirs = ferry("img", *args), qemu_img(*args)
        assert ours.out == theirs.out, (ours, theirs)


def test_apply_snapshot_of_another_size(ferry, qemu_img, tmp_path):
    """QEMU 7.2 takes the image back to the snapshot's size; so does ferry."""
    img = make(qemu_img, tmp_path / "r.qcow2", "compat=1.1")
    ferry("io", "-c", "write -P 5 0 1M", img)
    ferry("img", "snapshot", "-c", "small", img)
    ferry("img", "resize", img, "32M")
    ferry("io", "-c", "write -P 6 20M 1M", img)
    big = raw_of(qemu_img, img, tmp_path / "big.raw")
    ferry("img", "snapshot", "-c", "big", img)
    theirs = tmp_path / "theirs.qcow2"
    shutil.copy(img, theirs)
    ferry("img", "snapshot", "-a", "small", img)
    qemu_img("snapshot", "-a", "small", theirs)
    assert ferry("img", "info", "--output=json", img).json()["virtual-size"] == \
        qemu_img("info", "--output=json", theirs).json()["virtual-size"] == 8 * MiB
    assert qemu_img("compare", img, theirs).rc == 0
    qemu_checks_clean(qemu_img, img)
    ferry("img", "snapshot", "-a", "big", img)
    assert raw_of(qemu_img, img, tmp_path / "t.raw") == big
    qemu_checks_clean(qemu_img, img)


def test_resize_with_snapshots(ferry, qemu_img, tmp_path):
    img = make(qemu_img, tmp_path / "g.qcow2", "compat=1.1")
    ferry("io", "-c", "write -P 7 0 1M", img)
    ferry("img", "snapshot", "-c", "s", img)
    before = digest(img)
    # shrinking with snapshots stays refused (one line, nothing written)
    res = ferry("img", "resize", "--shrink", img, "4M", check=False)
    assert res.rc == 1 and len(res.err.strip().splitlines()) == 1, res
    assert "snapshot" in res.err
    assert digest(img) == before
    ferry("img", "resize", img, "16M")
    qemu_checks_clean(qemu_img, img)
    assert qemu_img("info", "--output=json", img).json()["virtual-size"] == 16 * MiB
    qemu_img("snapshot", "-a", "s", img)       # qemu-img reverts across it
    assert qemu_img("info", "--output=json", img).json()["virtual-size"] == 8 * MiB
    # a v2 image cannot be resized with snapshots, in either tool
    v2 = make(qemu_img, tmp_path / "v2.qcow2", "compat=0.10")
    ferry("img", "snapshot", "-c", "s", v2)
    ours = ferry("img", "resize", v2, "16M", check=False)
    theirs = qemu_img("resize", v2, "16M", check=False)
    assert ours.rc == theirs.rc == 1


def test_snapshot_refusals_like_qemu(ferry, qemu_img, tmp_path):
    img = make(qemu_img, tmp_path / "n.qcow2", "compat=1.1")
    ferry("img", "snapshot", "-c", "s", img)
    before = digest(img)
    for flag in ("-a", "-d"):
        ours = ferry("img", "snapshot", flag, "nosuch", img, check=False)
        theirs = qemu_img("snapshot", flag, "nosuch", img, check=False)
        assert ours.rc == theirs.rc == 1 and ours.out == theirs.out == ""
        assert len(ours.err.strip().splitlines()) == 1
    assert digest(img) == before
    # an external data file rules internal snapshots out, as in QEMU
    d = make(qemu_img, tmp_path / "d.qcow2",
             "data_file=%s" % (tmp_path / "d.raw"))
    ours = ferry("img", "snapshot", "-c", "s", d, check=False)
    theirs = qemu_img("snapshot", "-c", "s", d, check=False)
    assert ours.rc == theirs.rc == 1


def test_many_snapshots_round_trip(ferry, qemu_img, tmp_path):
    """A table that spans clusters (512-byte clusters, 200 entries)."""
    img = make(qemu_img, tmp_path / "m.qcow2", "cluster_size=512", "1M")
    ferry("io", "-c", "write -P 9 0 64k", img)
    for i in range(200):
        ferry("img", "snapshot", "-c", "snapshot-number-%03d" % i, img)
    assert ferry("img", "snapshot", "-l", img).out == \
        qemu_img("snapshot", "-l", img).out
    qemu_checks_clean(qemu_img, img)
    for i in range(0, 200, 2):
        ferry("img", "snapshot", "-d", "snapshot-number-%03d" % i, img)
    assert ferry("img", "snapshot", "-l", img).out == \
        qemu_img("snapshot", "-l", img).out
    assert len(qemu_img("info", "--output=json", img).json()["snapshots"]) == 100
    qemu_checks_clean(qemu_img, img)


def allocated(path):
    import os
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("passdown", ["on", "off"])
def test_delete_gives_space_back(ferry, qemu_img, qemu_io, tmp_path, passdown):
    """pass-discard-snapshot (on by default, as QEMU): clusters only the
    deleted snapshot used are discarded in the file."""
    img = make(qemu_img, tmp_path / "d.qcow2", "compat=1.1", "64M")
    qemu_io("-f", "qcow2", "-c", "write -P 1 0 32M", img)
    ferry("img", "snapshot", "-c", "s", img)
    qemu_io("-f", "qcow2", "-c", "write -P 2 0 32M", img)
    theirs = tmp_path / "theirs.qcow2"
    shutil.copy(img, theirs)
    before = allocated(img)
    ferry("img", "snapshot", "--image-opts", "-d", "s",
          "driver=qcow2,file.filename=%s,pass-discard-snapshot=%s" % (img, passdown))
    qemu_img("snapshot", "-d", "s", theirs)
    qemu_checks_clean(qemu_img, img)
    if passdown == "on":
        assert allocated(img) < before - 30 * MiB
        assert abs(allocated(img) - allocated(theirs)) < 2 * MiB
    else:
        assert allocated(img) >= before - MiB
