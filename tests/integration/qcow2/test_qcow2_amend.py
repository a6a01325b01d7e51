"""qcow2 amend against qemu-img amend on the same inputs: the same exit code,
the same options in `qemu-img info` afterwards, the same guest data, and a
clean `qemu-img check`; refusals leave the image untouched."""
import hashlib
import shutil

import pytest

MiB = 1 << 20


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fmt_data(qemu_img, img):
    return qemu_img("info", "--output=json", img).json()["format-specific"]["data"]


def populated(qemu_img, qemu_io, path, opts, snapshots=True, compressed=True):
    """An image with data, zero clusters (plain and allocated), compressed
    clusters, a discard, and (optionally) a snapshot sharing all of it."""
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, path, "16M")
    cmds = ["write -P 0x11 0 2M", "write -z 64k 64k", "write -z -u 1M 128k",
            "write -z 10M 64k", "write -P 0x22 12M 1M", "discard 12M 64k"]
    if compressed:
        cmds.append("write -c -P 0x33 4M 256k")
    args = ["-f", "qcow2"]
    for c in cmds:
        args += ["-c", c]
    qemu_io(*args, path)
    if snapshots:
        qemu_img("snapshot", "-c", "s1", path)
        qemu_io("-f", "qcow2", "-c", "write -P 0x44 0 64k", "-c", "write -z 128k 64k", path)
    return path


def both(ferry, qemu_img, tmp_path, img, opts):
    """Amend copies with each tool; return (ours, theirs, our image, theirs)."""
    a, b = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    shutil.copy(img, a)
    shutil.copy(img, b)
    return (ferry("img", "amend", "-o", opts, a, check=False),
            qemu_img("amend", "-o", opts, b, check=False), a, b)


def snapshot_names(qemu_img, path):
    return [s["name"] for s in
            qemu_img("info", "--output=json", path).json().get("snapshots", [])]


def same_result(qemu_img, img, a, b, ours, theirs, keys, qemu_sound=True):
    """Both tools succeeded and agree on the options; ours holds exactly the
    source's data, active and in every snapshot, and passes qemu-img check.
    qemu_sound=False: qemu-img 7.2's own result is known to be wrong (its
    downgrade zeroes clusters a snapshot still shares), so only ours is
    held to the source."""
    assert (ours.rc, ours.out) == (theirs.rc, theirs.out) == (0, ""), (ours, theirs)
    for path in (a, b) if qemu_sound else (a,):
        res = qemu_img("check", path, check=False)
        assert res.rc == 0, res
    da, db = fmt_data(qemu_img, a), fmt_data(qemu_img, b)
    for k in keys:
        assert da.get(k) == db.get(k), (k, da, db)
    assert qemu_img("compare", img, a).rc == 0
    if qemu_sound:
        assert qemu_img("compare", a, b).rc == 0
    assert snapshot_names(qemu_img, a) == snapshot_names(qemu_img, img)
    for name in snapshot_names(qemu_img, img):
        ra, rs = a.with_suffix(".s.raw"), img.with_suffix(".s.raw")
        qemu_img("convert", "-O", "raw", "-l", "snapshot.name=" + name, a, ra)
        qemu_img("convert", "-O", "raw", "-l", "snapshot.name=" + name, img, rs)
        assert digest(ra) == digest(rs), "snapshot %s changed" % name


KEYS = ["compat", "refcount-bits", "lazy-refcounts", "compression-type"]


@pytest.mark.parametrize("create,amend", [
    ("compat=1.1", "compat=0.10"),
    ("compat=0.10", "compat=1.1"),
    ("compat=0.10", "compat=1.1,lazy_refcounts=on,refcount_bits=32"),
    ("compat=1.1,lazy_refcounts=on", "lazy_refcounts=off"),
    ("compat=1.1", "lazy_refcounts=on"),
    ("compression_type=zstd", "compat=0.10"),
    ("refcount_bits=8", "compat=0.10,refcount_bits=16"),
])
def test_amend_compat_and_features_like_qemu(ferry, qemu_img, qemu_io, tmp_path, create, amend):
    compressed = "zstd" not in create
    img = populated(qemu_img, qemu_io, tmp_path / "src.qcow2", create,
                    compressed=compressed)
    ours, theirs, a, b = both(ferry, qemu_img, tmp_path, img, amend)
    same_result(qemu_img, img, a, b, ours, theirs, KEYS,
                qemu_sound="compat=0.10" not in amend)


def test_downgrade_keeps_zeroed_clusters_a_snapshot_shares(ferry, qemu_img, qemu_io, tmp_path):
    """A cluster zeroed (kept allocated) after a snapshot shares it: v2 has
    no zero flag, so the active side gets its own zeroes and the snapshot
    keeps its data.  (qemu-img 7.2 zeroes the shared cluster in place.)"""
    img = tmp_path / "z.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "4M")
    qemu_io("-f", "qcow2", "-c", "write -P 0x11 0 1M", img)
    qemu_img("snapshot", "-c", "s1", img)
    qemu_io("-f", "qcow2", "-c", "write -z 128k 64k", img)
    a = tmp_path / "a.qcow2"
    shutil.copy(img, a)
    ferry("img", "amend", "-o", "compat=0.10", a)
    assert qemu_img("check", a).rc == 0
    assert qemu_img("compare", img, a).rc == 0
    qemu_img("convert", "-O", "raw", "-l", "snapshot.name=s1", a, tmp_path / "s.raw")
    with open(tmp_path / "s.raw", "rb") as f:
        assert f.read(1 << 20) == b"\x11" * (1 << 20)


@pytest.mark.parametrize("bits", [4, 8, 16, 32, 64])
def test_amend_refcount_bits_like_qemu(ferry, qemu_img, qemu_io, tmp_path, bits):
    img = populated(qemu_img, qemu_io, tmp_path / "src.qcow2", "compat=1.1")
    ours, theirs, a, b = both(ferry, qemu_img, tmp_path, img,
                              "refcount_bits=%d" % bits)
    same_result(qemu_img, img, a, b, ours, theirs, KEYS)
    assert fmt_data(qemu_img, a)["refcount-bits"] == bits
    res = ferry("img", "check", "--output=json", a).json()
    assert res.get("leaks", 0) == 0 and res.get("corruptions", 0) == 0


def test_amend_size_like_qemu(ferry, qemu_img, qemu_io, tmp_path):
    img = populated(qemu_img, qemu_io, tmp_path / "src.qcow2", "compat=1.1",
                    snapshots=False)
    for size in ("32M", "8M"):
        ours, theirs, a, b = both(ferry, qemu_img, tmp_path, img, "size=" + size)
        assert (ours.rc, ours.out) == (theirs.rc, theirs.out) == (0, "")
        assert qemu_img("compare", a, b).rc == 0
        assert qemu_img("check", a).rc == 0


def test_amend_data_file_name_like_qemu(ferry, qemu_img, tmp_path):
    img = tmp_path / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o",
             "data_file=%s" % (tmp_path / "d.raw"), img, "8M")
    ours, theirs, a, b = both(ferry, qemu_img, tmp_path, img,
                              "data_file=%s" % (tmp_path / "other.raw"))
    assert (ours.rc, ours.out) == (theirs.rc, theirs.out) == (0, "")
    assert digest(a) == digest(b) or \
        ferry("img", "info", "--output=json", a).out.count("other.raw") == 1
    with open(a, "rb") as f, open(b, "rb") as g:
        assert b"other.raw" in f.read(65536) and b"other.raw" in g.read(65536)


@pytest.mark.parametrize("create,amend", [
    ("compat=1.1", "cluster_size=4k"),
    ("compat=1.1", "preallocation=metadata"),
    ("compat=1.1", "extended_l2=on"),
    ("compat=1.1", "compression_type=zstd"),
    ("compat=1.1", "nosuch=1"),
    ("compat=1.1", "compat=0.9"),
    ("compat=1.1", "refcount_bits=3"),
    ("compat=1.1", "refcount_bits=128"),
    ("compat=1.1", "backing_file=/nonexistent"),
    ("compat=1.1", "data_file=x"),
    ("compat=1.1", "data_file_raw=on"),
    ("compat=0.10", "lazy_refcounts=on"),
    ("compat=1.1", "compat=0.10,lazy_refcounts=on"),
    ("compat=1.1", "compat=0.10,refcount_bits=8"),
    ("refcount_bits=8", "compat=0.10"),
    ("extended_l2=on", "compat=0.10"),
    ("compression_type=zstd", "compat=0.10"),     # with compressed clusters
    ("compat=1.1", "refcount_bits=1"),            # a snapshot shares clusters
    ("compat=1.1", "refcount_bits=2"),            # 4 compressed in one cluster, twice
])
def test_amend_refusals_like_qemu(ferry, qemu_img, qemu_io, tmp_path, create, amend):
    img = populated(qemu_img, qemu_io, tmp_path / "src.qcow2", create,
                    snapshots="refcount_bits=" in amend)
    before = digest(img)
    ours, theirs, a, b = both(ferry, qemu_img, tmp_path, img, amend)
    assert ours.rc == theirs.rc == 1, (ours, theirs)
    assert ours.out == theirs.out
    assert len(ours.err.strip().splitlines()) == 1, ours.err
    assert digest(a) == before


def test_downgrade_refused_for_snapshot_of_other_size(ferry, qemu_img, qemu_io, tmp_path):
    img = populated(qemu_img, qemu_io, tmp_path / "src.qcow2", "compat=1.1")
    qemu_img("resize", img, "32M")
    ours, theirs, a, b = both(ferry, qemu_img, tmp_path, img, "compat=0.10")
    assert ours.rc == theirs.rc == 1
    assert "snapshot" in ours.err.lower()


def test_downgrade_with_bitmaps_refused(ferry, qemu_img, tmp_path):
    """qemu-img 7.2 downgrades and leaks the bitmaps (its check then reports
    leaked clusters); ferry refuses and says how to go on."""
    img = tmp_path / "b.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "8M")
    qemu_img("bitmap", "--add", img, "b0")
    before = digest(img)
    res = ferry("img", "amend", "-o", "compat=0.10", img, check=False)
    assert res.rc == 1 and "bitmap" in res.err
    assert digest(img) == before


def test_amend_progress(ferry, qemu_img, tmp_path):
    img = tmp_path / "p.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "8M")
    res = ferry("img", "amend", "-p", "-o", "refcount_bits=64", img)
    lines = res.out.replace("\r", "\n").split()
    assert lines[0] == "(0.00/100%)" and lines[-1] == "(100.00/100%)", repr(res.out)
