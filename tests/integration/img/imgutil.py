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


def write_qcow2_shared(path, size, guest_offsets, cluster_bits=16):
    """A valid qcow2 v3 image of `size` bytes whose clusters at guest_offsets
    all map to one shared host cluster (refcount = their number, as if
    snapshots shared it).  Makes "1 TiB with 10,000 allocated clusters"
    in a few hundred KiB on disk, which qemu-io cannot."""
    import struct
    cs = 1 << cluster_bits
    l2_entries = cs // 8
    l2_cover = cs * l2_entries
    l1_size = (size + l2_cover - 1) // l2_cover
    assert l1_size * 8 <= cs and len(guest_offsets) < 65536
    l2_index = sorted({off // l2_cover for off in guest_offsets})
    first_l2 = 4                                  # header, reftable, refblock, L1
    data_cluster = first_l2 + len(l2_index)
    nb_clusters = data_cluster + 1
    assert nb_clusters <= cs // 2                 # one refcount block is enough
    copied = 1 << 63
    with open(path, "wb") as f:
        hdr = struct.pack(">4sIQIIQIIQQIIQQQQII", b"QFI\xfb", 3, 0, 0, cluster_bits,
                          size, 0, l1_size, 3 * cs, 1 * cs, 1, 0, 0, 0, 0, 0, 4, 104)
        f.write(hdr + b"\0" * 8)                  # end of header extensions
        f.seek(1 * cs)
        f.write(struct.pack(">Q", 2 * cs))        # refcount table -> block
        f.seek(2 * cs)
        refs = [1] * data_cluster + [len(guest_offsets)]
        f.write(struct.pack(">%dH" % len(refs), *refs))
        f.seek(3 * cs)
        l1 = [0] * l1_size
        for n, idx in enumerate(l2_index):
            l1[idx] = ((first_l2 + n) * cs) | copied
        f.write(struct.pack(">%dQ" % l1_size, *l1))
        for n, idx in enumerate(l2_index):
            l2 = [0] * l2_entries
            for off in guest_offsets:
                if off // l2_cover == idx:
                    l2[(off % l2_cover) // cs] = data_cluster * cs   # shared: no COPIED
            f.seek((first_l2 + n) * cs)
            f.write(struct.pack(">%dQ" % l2_entries, *l2))
        f.seek(data_cluster * cs)
        f.write(bytes(range(256)) * (cs // 256))
    return path


def need_driver_op(tmp_path, what, *ferry_args):
    """Skip (saying why) when ferry answers `ferry img ARGS` with "... not
    supported yet": the driver op the command needs has not landed.  The
    probe runs on a scratch qcow2 image (SCRATCH in ARGS)."""
    scratch = tmp_path / "op-probe.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(scratch), "1M"],
                   check=True)
    args = [str(scratch) if a == "SCRATCH" else str(a) for a in ferry_args]
    r = subprocess.run([ferry_path(), "img"] + args, capture_output=True, text=True)
    os.unlink(scratch)
    if r.returncode != 0 and " yet" in r.stderr:
        pytest.skip("%s waits for the qcow2 driver: %s" % (what, r.stderr.strip()))
