"""The corrupt-image corpus (tests/corrupt/corrupt_images.py): every image
gets one clear line and a non-zero exit, nothing is written unless repair is
asked for, and ferry's check agrees with qemu-img check."""
import hashlib
import json
import os
import shutil
import sys

import pytest

from conftest import TOP, need, run

sys.path.insert(0, os.path.join(TOP, "tests", "corrupt"))
import corrupt_images  # noqa: E402

need_qemu = pytest.mark.skipif(shutil.which("qemu-img") is None,
                               reason="qemu-img not installed (the corpus is built with it)")


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    need("qemu-img")
    need("qemu-io")
    return corrupt_images.build(str(tmp_path_factory.mktemp("corrupt")))


def cases(kind):
    return sorted(n for n, (_, k) in corrupt_images.CASES.items() if k == kind)


def fresh_copy(corpus, name, tmp_path):
    """A private copy (and its companion files), so repairs don't leak."""
    src = corpus[name]
    d = os.path.dirname(src)
    for f in os.listdir(d):
        if f.startswith(name + "."):
            shutil.copy(os.path.join(d, f), tmp_path / f)
    # backing-file names inside the images are absolute; the loop cases
    # are read-only tests and use the corpus copy directly.
    return str(tmp_path / os.path.basename(src))


def one_line_error(res, name):
    assert res.rc != 0, res
    lines = [l for l in res.err.splitlines() if l.strip()]
    assert len(lines) == 1, "expected one error line for %s:\n%s" % (name, res.err)
    assert name in lines[0], lines[0]
    return lines[0]


@need_qemu
@pytest.mark.parametrize("name", cases("open"))
def test_open_damage_is_one_clear_line(ferry, corpus, name):
    path = corpus[name]
    before = digest(path)
    res = ferry("img", "info", "--backing-chain", path, check=False)
    one_line_error(res, name)
    # opening for writing fails the same way and writes nothing
    res = ferry("io", "-c", "write -P 0x55 0 4k", path, check=False)
    assert res.rc != 0
    res = ferry("img", "check", path, check=False)
    assert res.rc == 1, res
    assert digest(path) == before


@need_qemu
@pytest.mark.parametrize("name", cases("read"))
def test_read_damage_fails_the_read_clearly(ferry, corpus, name):
    path = corpus[name]
    before = digest(path)
    ferry("img", "info", path)
    res = ferry("io", "-r", "-c", "read 0 128k", path, check=False)
    assert res.rc != 0, res
    assert "past the end" in res.err or "unaligned" in res.err, res.err
    res = ferry("img", "check", "--output=json", path, check=False)
    assert res.rc == 2, res
    assert res.json()["corruptions"] > 0
    assert digest(path) == before


@need_qemu
@pytest.mark.parametrize("name", cases("check") + cases("read"))
def test_check_agrees_with_qemu_img(ferry, qemu_img, corpus, name):
    path = corpus[name]
    before = digest(path)
    ours = ferry("img", "check", "--output=json", path, check=False)
    theirs = qemu_img("check", "--output=json", path, check=False)
    assert ours.rc == theirs.rc == 2, (ours, theirs)
    assert ours.json()["corruptions"] > 0 and theirs.json()["corruptions"] > 0
    assert digest(path) == before


@need_qemu
@pytest.mark.parametrize("name,guest,meta,what", [
    ("data-overlaps-refcount-block", 0, "refblock", "a refcount block"),
    ("data-overlaps-snapshot-l2", 5 * 65536, "snapshot-l2",
     "a snapshot's L2 table"),
    ("data-overlaps-l1", 0, "l1", "the active L1 table"),
])
def test_in_place_write_onto_metadata_refused(ferry, corpus, tmp_path, name,
                                              guest, meta, what):
    """The overlap check stops a data write aimed at metadata: one clear
    line, and the metadata cluster keeps its bytes."""
    path = fresh_copy(corpus, name, tmp_path)
    img = corrupt_images.Image(path)
    host = {"refblock": img.refblock_offset,
            "l1": lambda: img.l1_offset,
            "snapshot-l2": lambda: img.u64(img.u64(img.u64(64))) & 0x00fffffffffffe00}[meta]()
    before = img.read(host, 65536)
    res = ferry("io", "-c", "write -P 0x99 %d 4k" % guest, path, check=False)
    assert res.rc != 0, res
    assert "would overwrite " + what in res.err, res.err
    assert img.read(host, 65536) == before


@need_qemu
def test_leak_is_exit_3_and_repairable(ferry, qemu_img, corpus, tmp_path):
    path = fresh_copy(corpus, "leaked-cluster", tmp_path)
    res = ferry("img", "check", "--output=json", path, check=False)
    assert res.rc == 3, res
    assert res.json()["leaks"] == 1
    assert qemu_img("check", path, check=False).rc == 3
    ferry("img", "check", "-r", "leaks", path)
    assert qemu_img("check", path, check=False).rc == 0


@need_qemu
@pytest.mark.parametrize("name", ["refcount-zero-for-used-cluster",
                                  "leaked-cluster",
                                  "snapshot-extra-incomplete"])
def test_repair_all_leaves_image_qemu_accepts(ferry, qemu_img, corpus,
                                               tmp_path, name):
    path = fresh_copy(corpus, name, tmp_path)
    data_before = qemu_img("convert", "-O", "raw", path, tmp_path / "before.raw",
                           check=False)
    ferry("img", "check", "-r", "all", path, check=False)
    res = qemu_img("check", path, check=False)
    assert res.rc == 0, res
    if data_before.rc == 0:
        after = tmp_path / "after.raw"
        qemu_img("convert", "-O", "raw", path, after)
        assert digest(after) == digest(tmp_path / "before.raw")


@need_qemu
def test_refcount_overflow_repair_names_the_cluster(ferry, qemu_img, corpus,
                                                    tmp_path):
    """Neither tool can count two references in a 1-bit refcount; ferry says
    which cluster and what to do, and exits non-zero like qemu-img."""
    path = fresh_copy(corpus, "refcount-overflow", tmp_path)
    res = ferry("img", "check", "-r", "all", path, check=False)
    assert res.rc != 0
    assert "0x50000" in res.err and "refcount_bits=1" in res.err, res.err
    assert qemu_img("check", path, check=False).rc == 2


@need_qemu
def test_fuzz_harness_survives_corpus(corpus):
    exe = os.path.join(TOP, "tests", "fuzz", "fuzz-qcow2")
    if not os.path.exists(exe):
        pytest.skip("tests/fuzz/fuzz-qcow2 not built (make check builds it)")
    d = os.path.dirname(next(iter(corpus.values())))
    res = run([exe, d], check=False, timeout=600)
    assert res.rc == 0, res
