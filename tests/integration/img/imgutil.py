"""Helpers shared by the ferry img subcommand tests (check, map, compare, ...).

Each test runs the same invocation through ferry and through Debian's
qemu-img and compares what a script would see: stdout, exit code, and for
read-only commands the image's bytes before and after.
"""
import hashlib
import os
import subprocess

import pytest

from conftest import ferry_path, need


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def both(ferry, qemu_img, *args):
    """Run `ferry img ARGS` and `qemu-img ARGS`; return (ours, theirs)."""
    ours = ferry("img", *args, check=False)
    theirs = qemu_img(*args, check=False)
    return ours, theirs


def assert_same(ferry, qemu_img, *args, stdout=True):
    """Same exit code (and stdout) from ferry and qemu-img for ARGS."""
    ours, theirs = both(ferry, qemu_img, *args)
    assert ours.rc == theirs.rc, "exit codes differ for %s:\nferry %r\nqemu-img %r" % (
        " ".join(map(str, args)), ours, theirs)
    if stdout:
        assert ours.out == theirs.out, "stdout differs for %s:\nferry %r\nqemu-img %r" % (
            " ".join(map(str, args)), ours, theirs)
    return ours, theirs


def one_line_error(res):
    """An error is one clear line on stderr (usage errors add a hint line)."""
    lines = [l for l in res.err.splitlines() if l.strip()]
    assert lines, "no error message: %r" % res
    assert lines[0].startswith("ferry img"), res.err
    assert len(lines) == 1 or lines[1].startswith("Try 'ferry img"), res.err


def qemu_io(img, fmt, *cmds):
    need("qemu-io")
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    args.append(str(img))
    subprocess.run(args, check=True, capture_output=True)


def sparse_raw(path, size, writes):
    """A raw file of `size` bytes, with (offset, length, byte) writes made by
    qemu-io (zero byte -> write -z, which punches or zeroes)."""
    with open(path, "wb") as f:
        f.truncate(size)
    cmds = []
    for off, length, pat in writes:
        if pat == 0:
            cmds.append("write -z %d %d" % (off, length))
        else:
            cmds.append("write -P %d %d %d" % (pat, off, length))
    if cmds:
        qemu_io(path, "raw", *cmds)
    return path


_qcow2_ok = None


def need_ferry_qcow2(tmp_path):
    """Skip (saying why) when this ferry cannot open qcow2 images yet."""
    global _qcow2_ok
    if _qcow2_ok is None:
        need("qemu-img")
        img = tmp_path / "probe.qcow2"
        subprocess.run(["qemu-img", "create", "-f", "qcow2", str(img), "1M"],
                       check=True, capture_output=True)
        r = subprocess.run([ferry_path(), "img", "info", str(img)],
                           capture_output=True, text=True)
        _qcow2_ok = r.returncode == 0
        os.unlink(img)
    if not _qcow2_ok:
        pytest.skip("this ferry has no qcow2 driver yet (branch qcow2 not merged)")


def qcow2(qemu_img, path, size="64M", *opts, backing=None):
    args = ["create", "-q", "-f", "qcow2"]
    for o in opts:
        args += ["-o", o]
    if backing:
        args += ["-b", str(backing), "-F", "qcow2"]
    args += [str(path)]
    if size:
        args.append(size)
    qemu_img(*args)
    return path
