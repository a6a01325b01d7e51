"""qcow2 driver against Debian's qemu-img and qemu-io, both directions.

Images ferry creates and writes must pass `qemu-img check` and match a raw
reference byte for byte (`qemu-img compare`); images qemu-img creates and
qemu-io fills must read the same through `ferry io`, and ferry's check must
agree with qemu-img check.
"""
import json
import os
import signal
import struct
import subprocess

import pytest

from conftest import need, pattern_file

MiB = 1024 * 1024
SIZE = 8 * MiB

# (id, ferry/qemu-img create options, ops allowed)
CONFIGS = [
    ("v2", "compat=0.10", {"compress": True}),
    ("v3", "compat=1.1", {"compress": True}),
    ("c512", "cluster_size=512", {"compress": True}),
    ("c4k", "cluster_size=4k", {"compress": True}),
    ("c64k", "cluster_size=64k", {"compress": True}),
    ("c2M", "cluster_size=2M", {"compress": True}),
    ("rc1", "refcount_bits=1", {"compress": False}),
    ("rc8", "refcount_bits=8", {"compress": True}),
    ("rc64", "refcount_bits=64", {"compress": True}),
    ("extl2", "extended_l2=on,cluster_size=64k", {"compress": True}),
    ("extl2-16k", "extended_l2=on,cluster_size=16k", {"compress": True}),
    ("zstd", "compression_type=zstd", {"compress": True}),
    ("datafile", "data_file={dir}/data.raw", {"compress": False}),
    ("datafile-raw", "data_file={dir}/data.raw,data_file_raw=on", {"compress": False}),
    ("lazy", "lazy_refcounts=on", {"compress": True}),
    ("pre-metadata", "preallocation=metadata", {"compress": False}),
    ("pre-falloc", "preallocation=falloc", {"compress": False}),
    ("pre-full", "preallocation=full", {"compress": False}),
]


def ops_for(allowed):
    """A write pattern with partial clusters, spans, zeroes and discards."""
    ops = [
        ("write", 0x11, 0, 65536),
        ("write", 0x22, 4096 + 17 * 512, 3 * 512),        # partial cluster
        ("write", 0x33, 1 * MiB - 1024, 2 * MiB + 4096),   # spans clusters
        ("write", 0x44, 5 * MiB, 1 * MiB),
        ("zero", 0, 5 * MiB + 65536, 128 * 1024),
        ("zero", 0, 512, 1024),                              # partial zero
        ("discard", 0, 6 * MiB, 2 * MiB),
        ("write", 0x55, 6 * MiB + 4096, 8192),
        ("write", 0x66, 7 * MiB + 512, 512),
    ]
    if allowed.get("compress"):
        # first, so later writes copy-on-write out of compressed clusters
        ops.insert(0, ("compress", 0x77, 4 * MiB, 2 * MiB))
    return ops


def ref_runs(ref):
    """(pattern, offset, length) runs of equal bytes in the reference."""
    runs, start = [], 0
    for i in range(1, len(ref) + 1):
        if i == len(ref) or ref[i] != ref[start]:
            runs.append((ref[start], start, i - start))
            start = i
    return runs


def apply_ref(ref, ops):
    for kind, pat, off, length in ops:
        if kind in ("write", "compress"):
            ref[off:off + length] = bytes([pat]) * length
        elif kind == "zero":
            ref[off:off + length] = bytes(length)
        elif kind == "discard":
            # discard contents are undefined; the test re-writes them as zero
            ref[off:off + length] = bytes(length)


def io_cmds(ops, cluster):
    cmds = []
    for kind, pat, off, length in ops:
        if kind == "write":
            cmds += ["-c", "write -P 0x%x %d %d" % (pat, off, length)]
        elif kind == "compress":
            cmds += ["-c", "write -c -P 0x%x %d %d" % (pat, off, length)]
        elif kind == "zero":
            cmds += ["-c", "write -z %d %d" % (off, length)]
        elif kind == "discard":
            cmds += ["-c", "discard %d %d" % (off, length)]
            cmds += ["-c", "write -z %d %d" % (off, length)]
    return cmds


def cluster_of(opts):
    for part in opts.split(","):
        if part.startswith("cluster_size="):
            v = part.split("=")[1]
            mult = {"k": 1024, "M": MiB}.get(v[-1], 1)
            return int(v.rstrip("kM")) * mult
    return 65536


def check_json(qemu_img, img):
    r = qemu_img("check", "--output=json", img, check=False)
    assert r.rc == 0, r
    return json.loads(r.out)


def ferry_check(ferry, img, fix=None, ro=True):
    args = ["io"] + (["-r"] if ro else []) + ["-c", "check" + (" -r " + fix if fix else ""), img]
    r = ferry(*args, check=False)
    line = [l for l in r.out.splitlines() if l.startswith("check: ")]
    assert line, r
    return dict(kv.split("=") for kv in line[0][7:].split()), r


@pytest.mark.parametrize("cid,opts,allowed", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_ferry_writes_pass_qemu_check_and_compare(ferry, qemu_img, tmp_path,
                                                 cid, opts, allowed):
    opts = opts.format(dir=tmp_path)
    img = tmp_path / "f.qcow2"
    ferry("img", "create", "-q", "-f", "qcow2", "-o", opts, img, str(SIZE))
    ops = ops_for(allowed)
    ferry("io", *io_cmds(ops, cluster_of(opts)), img)
    ref = bytearray(SIZE)
    apply_ref(ref, ops)
    (tmp_path / "ref.raw").write_bytes(bytes(ref))
    c = check_json(qemu_img, img)
    assert c.get("corruptions", 0) == 0 and c.get("leaks", 0) == 0, c
    qemu_img("compare", "-f", "raw", "-F", "qcow2", tmp_path / "ref.raw", img)
    # ferry's check agrees with qemu-img's on the same image
    ours, _ = ferry_check(ferry, img)
    assert int(ours["corruptions"]) == 0 and int(ours["leaks"]) == 0
    for key in ("image-end-offset", "total-clusters", "allocated-clusters",
                "compressed-clusters"):
        assert int(ours[key]) == c.get(key, 0), (key, ours, c)


@pytest.mark.parametrize("cid,opts,allowed", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_qemu_written_images_read_by_ferry(ferry, qemu_img, qemu_io, tmp_path,
                                          cid, opts, allowed):
    opts = opts.format(dir=tmp_path)
    img = tmp_path / "q.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, img, str(SIZE))
    ops = ops_for(allowed)
    qemu_io("-f", "qcow2", *io_cmds(ops, cluster_of(opts)), img)
    ref = bytearray(SIZE)
    apply_ref(ref, ops)
    # read back every op's range with a pattern check, and the whole image
    cmds = []
    for pat, off, length in ref_runs(ref):
        cmds += ["-c", "read -P 0x%x %d %d" % (pat, off, length)]
    ferry("io", "-r", *cmds, img)
    ours, _ = ferry_check(ferry, img)
    theirs = check_json(qemu_img, img)
    for key in ("image-end-offset", "total-clusters", "allocated-clusters",
                "fragmented-clusters", "compressed-clusters"):
        assert int(ours[key]) == theirs.get(key, 0), (key, ours, theirs)


def test_read_pattern_mismatch_fails_like_qemu_io(ferry, qemu_img, tmp_path):
    img = tmp_path / "p.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "1M")
    r = ferry("io", "-c", "write -P 0x5a 0 4096", "-c", "read -P 0x5b 0 4096",
              img, check=False)
    assert r.rc == 1
    assert "Pattern verification failed at offset 0, 4096 bytes" in r.out
    assert "wrote 4096/4096 bytes at offset 0" in r.out


@pytest.mark.parametrize("backing_fmt", ["qcow2", "raw"])
def test_backing_chain_cow(ferry, qemu_img, qemu_io, tmp_path, backing_fmt):
    base = tmp_path / ("base." + backing_fmt)
    top = tmp_path / "top.qcow2"
    # the backing file is shorter than the overlay: zeroes past its end
    qemu_img("create", "-q", "-f", backing_fmt, base, "4M")
    qemu_io("-f", backing_fmt, "-c", "write -P 0xaa 0 4M", base)
    ferry("img", "create", "-q", "-f", "qcow2", "-b", base.name, "-F",
          backing_fmt, top, "8M")
    ferry("io", "-c", "write -P 0x11 1000 100", "-c", "write -P 0x22 3M 2M",
          top)
    ferry("io", "-r", "-c", "read -P 0xaa 0 1000", "-c", "read -P 0x11 1000 100",
          "-c", "read -P 0xaa 1100 %d" % (3 * MiB - 1100),
          "-c", "read -P 0x22 3M 2M", "-c", "read -P 0 5M 3M", top)
    c = check_json(qemu_img, top)
    assert c.get("corruptions", 0) == 0 and c.get("leaks", 0) == 0
    qemu_io("-c", "read -P 0xaa 0 1000", "-c", "read -P 0x11 1000 100",
            "-c", "read -P 0xaa 65536 65536", "-c", "read -P 0 5M 3M", top)
    # the backing file is untouched
    qemu_io("-f", backing_fmt, "-c", "read -P 0xaa 0 4M", base)
    info = qemu_img("info", "--output=json", top).json()
    assert info["backing-filename-format"] == backing_fmt


def test_snapshot_survives_ferry_writes(ferry, qemu_img, qemu_io, tmp_path):
    img = tmp_path / "s.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "4M")
    qemu_io("-c", "write -P 0x11 0 4M", img)
    qemu_img("snapshot", "-c", "snap1", img)
    ferry("io", "-c", "write -P 0x22 4096 8192", "-c", "write -P 0x33 2M 1M",
          "-c", "write -z 3M 64k", "-c", "discard 3M 64k", img)
    c = check_json(qemu_img, img)
    assert c.get("corruptions", 0) == 0 and c.get("leaks", 0) == 0, c
    ferry("io", "-r", "-c", "read -P 0x22 4096 8192", "-c", "read -P 0x11 0 4096",
          "-c", "read -P 0x33 2M 1M", img)
    ours, _ = ferry_check(ferry, img)
    assert int(ours["corruptions"]) == 0 and int(ours["leaks"]) == 0
    qemu_img("snapshot", "-a", "snap1", img)
    qemu_io("-c", "read -P 0x11 0 4M", img)


def test_lazy_refcounts_dirty_image_repaired_on_open(ferry, qemu_img, qemu_io,
                                                     tmp_path):
    img = tmp_path / "lazy.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", img, "8M")
    r = qemu_io("-c", "write -P 0x42 0 3M", "-c", "sigraise 9", img, check=False)
    assert r.rc != 0
    info = qemu_img("info", "--output=json", "-U", img).json()
    assert info["dirty-flag"] is True
    r = qemu_img("check", img, check=False)
    assert r.rc != 0          # stale refcounts before the repair
    ferry("io", "-c", "read -P 0x42 0 3M", "-c", "write -P 0x43 4M 64k", img)
    c = check_json(qemu_img, img)
    assert c.get("corruptions", 0) == 0 and c.get("leaks", 0) == 0, c
    assert qemu_img("info", "--output=json", img).json()["dirty-flag"] is False
    qemu_io("-c", "read -P 0x42 0 3M", "-c", "read -P 0x43 4M 64k", img)


def test_ferry_lazy_writer_killed_is_repaired(ferry, qemu_img, tmp_path):
    img = tmp_path / "lazyk.qcow2"
    ferry("img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", img, "8M")
    # a ferry writer that dies without closing: SIGKILL after its writes
    proc = subprocess.Popen(["sh", "-c", "exec \"$0\" io -c 'write -P 0x61 0 2M' "
                             "-c 'flush' -c 'read -P 0x61 0 1' \"$1\" && kill -9 $$",
                             os.environ.get("FERRY") or "ferry", str(img)])
    proc.wait()
    ferry("io", "-c", "read -P 0x61 0 2M", img)
    c = check_json(qemu_img, img)
    assert c.get("corruptions", 0) == 0 and c.get("leaks", 0) == 0, c


def test_info_json_matches_qemu(ferry, qemu_img, tmp_path):
    cases = ["compat=0.10", "compat=1.1,lazy_refcounts=on",
             "refcount_bits=8,extended_l2=on", "compression_type=zstd",
             "data_file={dir}/d.raw,data_file_raw=on"]
    for i, opts in enumerate(cases):
        img = tmp_path / ("i%d.qcow2" % i)
        qemu_img("create", "-q", "-f", "qcow2", "-o", opts.format(dir=tmp_path),
                 img, "16M")
        ours = ferry("img", "info", "--output=json", img).json()
        theirs = qemu_img("info", "--output=json", img).json()
        assert ours["format-specific"] == theirs["format-specific"], opts
        for key in ("virtual-size", "cluster-size", "format", "dirty-flag"):
            assert ours[key] == theirs[key], (key, opts)


def test_ferry_created_info_matches_qemu_created(ferry, qemu_img, tmp_path):
    for opts in ["", "compat=0.10", "cluster_size=4k,refcount_bits=64",
                 "extended_l2=on,compression_type=zstd,lazy_refcounts=on"]:
        a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
        args = ["-o", opts] if opts else []
        ferry("img", "create", "-q", "-f", "qcow2", *args, a, "100M")
        qemu_img("create", "-q", "-f", "qcow2", *args, b, "100M")
        ia = qemu_img("info", "--output=json", a).json()
        ib = qemu_img("info", "--output=json", b).json()
        assert ia["format-specific"] == ib["format-specific"], opts
        assert ia["cluster-size"] == ib["cluster-size"]
        assert check_json(qemu_img, a)["image-end-offset"] == \
            check_json(qemu_img, b)["image-end-offset"], opts


def test_truncate_grow_and_shrink(ferry, qemu_img, qemu_io, tmp_path):
    img = tmp_path / "t.qcow2"
    ferry("img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", img, "4M")
    ferry("io", "-c", "write -P 0x11 0 4M", "-c", "truncate 64M",
          "-c", "write -P 0x22 60M 1M", img)
    assert qemu_img("info", "--output=json", img).json()["virtual-size"] == 64 * MiB
    qemu_io("-c", "read -P 0x11 0 4M", "-c", "read -P 0 4M 56M",
            "-c", "read -P 0x22 60M 1M", img)
    ferry("io", "-c", "truncate 2M", img)
    c = check_json(qemu_img, img)
    assert c.get("corruptions", 0) == 0 and c.get("leaks", 0) == 0, c
    assert qemu_img("info", "--output=json", img).json()["virtual-size"] == 2 * MiB
    qemu_io("-c", "read -P 0x11 0 2M", img)


# -- bad input -------------------------------------------------------------

def header(img):
    with open(img, "rb") as f:
        return bytearray(f.read(512))


def poke(img, off, data):
    with open(img, "r+b") as f:
        f.seek(off)
        f.write(data)


def test_l1_offset_past_eof_is_one_clear_line(ferry, qemu_img, tmp_path):
    img = tmp_path / "bad.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "1M")
    poke(img, 40, struct.pack(">Q", 0x7000000000))
    r = ferry("io", "-r", "-c", "read 0 512", img, check=False)
    assert r.rc == 1
    assert "L1 table offset 0x7000000000 is past the end of the file" in r.err
    assert r.err.count("\n") == 1


def test_unknown_incompatible_bit_is_named(ferry, qemu_img, tmp_path):
    img = tmp_path / "inc.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "1M")
    poke(img, 72, struct.pack(">Q", 1 << 9))
    r = ferry("io", "-r", "-c", "read 0 512", img, check=False)
    assert r.rc == 1 and "bit 9" in r.err and "incompatible" in r.err


def test_encrypted_image_refused(ferry, qemu_img, tmp_path):
    img = tmp_path / "enc.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "1M")
    poke(img, 32, struct.pack(">I", 2))
    r = ferry("io", "-r", "-c", "read 0 512", img, check=False)
    assert r.rc == 1
    assert "encrypted qcow2 images are not supported yet" in r.err
    r = ferry("img", "create", "-f", "qcow2", "-o", "encrypt.format=luks",
              tmp_path / "e2.qcow2", "1M", check=False)
    assert r.rc == 1 and "encrypted qcow2 images are not supported yet" in r.err


def l2_entry_offset(img):
    """Host offset of the first L2 entry of the image (L1[0] must be set)."""
    h = header(img)
    l1 = struct.unpack(">Q", h[40:48])[0]
    with open(img, "rb") as f:
        f.seek(l1)
        return struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00


def test_l2_entry_past_eof_marks_corrupt(ferry, qemu_img, qemu_io, tmp_path):
    img = tmp_path / "c.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "1M")
    qemu_io("-c", "write -P 0x11 0 64k", img)
    l2 = l2_entry_offset(img)
    poke(img, l2, struct.pack(">Q", (1 << 63) | 0x100000000))
    r = ferry("io", "-c", "read 0 4096", img, check=False)
    assert r.rc == 1 and "read failed" in r.out
    assert "past the end of the file" in r.err
    info = qemu_img("info", "--output=json", img).json()
    assert info["format-specific"]["data"]["corrupt"] is True
    r = ferry("io", "-c", "write 0 512", img, check=False)
    assert r.rc == 1 and "corrupt" in r.err


def test_check_finds_and_repairs_leak_and_corruption(ferry, qemu_img, qemu_io,
                                                      tmp_path):
    img = tmp_path / "r.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "4M")
    qemu_io("-c", "write -P 0x11 0 1M", "-c", "discard 0 64k", img)
    h = header(img)
    rt = struct.unpack(">Q", h[48:56])[0]
    with open(img, "rb") as f:
        f.seek(rt)
        rb = struct.unpack(">Q", f.read(8))[0]
    # cluster 3 (L1) refcount 0 -> corruption; the discarded data cluster
    # (5) refcount 1 -> leak
    poke(img, rb + 2 * 3, struct.pack(">H", 0))
    poke(img, rb + 2 * 5, struct.pack(">H", 1))
    theirs = qemu_img("check", "--output=json", img, check=False)
    ours, r = ferry_check(ferry, img)
    assert int(ours["corruptions"]) == json.loads(theirs.out)["corruptions"] == 1
    assert int(ours["leaks"]) == json.loads(theirs.out)["leaks"] == 1
    ours, r = ferry_check(ferry, img, fix="all", ro=False)
    assert int(ours["corruptions-fixed"]) == 1 and int(ours["leaks-fixed"]) == 1
    c = check_json(qemu_img, img)
    assert c.get("corruptions", 0) == 0 and c.get("leaks", 0) == 0, c
    qemu_io("-c", "read -P 0 0 64k", "-c", "read -P 0x11 64k 960k", img)


def test_autoclear_bits_cleared_and_extensions_kept(ferry, qemu_img, tmp_path):
    img = tmp_path / "ac.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "1M")
    poke(img, 88, struct.pack(">Q", (1 << 5)))
    ferry("io", "-r", "-c", "read 0 512", img)
    assert struct.unpack(">Q", header(img)[88:96])[0] == 1 << 5
    ferry("io", "-c", "write 0 512", img)
    assert struct.unpack(">Q", header(img)[88:96])[0] == 0


def test_map_and_length_match_qemu_io(ferry, qemu_img, qemu_io, tmp_path):
    base = tmp_path / "mb.qcow2"
    top = tmp_path / "mt.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "16M")
    qemu_io("-c", "write 0 1M", "-c", "write 10M 100k", "-c", "write -z 12M 1M",
            base)
    qemu_img("create", "-q", "-f", "qcow2", "-b", base.name, "-F", "qcow2",
             top, "16M")
    ferry("io", "-c", "write 512k 1M", "-c", "write -c 4M 128k",
          "-c", "write -z 5M 64k", top)
    for img in (base, top):
        ours = ferry("io", "-r", "-c", "map", "-c", "length", img).out
        theirs = qemu_io("-r", "-c", "map", "-c", "length", img).out
        assert ours == theirs, img


RANDOM_CONFIGS = [
    ("v2", "compat=0.10", None),
    ("v3-c4k", "cluster_size=4k", None),
    ("extl2", "extended_l2=on,cluster_size=32k", None),
    ("c512-rc8", "cluster_size=512,refcount_bits=8", None),
    ("backing", "cluster_size=4k", "qcow2"),
    ("extl2-backing", "extended_l2=on,cluster_size=16k", "raw"),
]


@pytest.mark.parametrize("cid,opts,backing", RANDOM_CONFIGS,
                         ids=[c[0] for c in RANDOM_CONFIGS])
def test_random_ops_match_reference(ferry, qemu_img, qemu_io, tmp_path, cid,
                                    opts, backing):
    import random
    size = 4 * MiB
    rnd = random.Random(cid)
    ref = bytearray(size)
    img = tmp_path / "r.qcow2"
    args = ["-o", opts]
    if backing:
        base = tmp_path / ("b." + backing)
        qemu_img("create", "-q", "-f", backing, base, str(size - 300 * 1024))
        qemu_io("-f", backing, "-c", "write -P 0xbb 0 %d" % (size - 300 * 1024),
                base)
        ref[:size - 300 * 1024] = b"\xbb" * (size - 300 * 1024)
        args += ["-b", base.name, "-F", backing]
    ferry("img", "create", "-q", "-f", "qcow2", *args, img, str(size))
    cluster = cluster_of(opts)
    cmds = []
    for i in range(60):
        kind = rnd.choice(["write", "write", "write", "zero", "zerou", "compress",
                           "discard"])
        if kind == "compress":
            off = rnd.randrange(0, size // cluster) * cluster
            length = min(rnd.randrange(1, 4) * cluster, size - off)
        else:
            off = rnd.randrange(0, size // 512) * 512
            length = min(rnd.randrange(1, 300) * 512, size - off)
        pat = rnd.randrange(1, 255)
        if kind == "write":
            cmds += ["-c", "write -P 0x%x %d %d" % (pat, off, length)]
            ref[off:off + length] = bytes([pat]) * length
        elif kind == "compress":
            cmds += ["-c", "write -c -P 0x%x %d %d" % (pat, off, length)]
            ref[off:off + length] = bytes([pat]) * length
        elif kind in ("zero", "zerou"):
            cmds += ["-c", "write -z %s%d %d" % ("-u " if kind == "zerou" else "",
                                                 off, length)]
            ref[off:off + length] = bytes(length)
        else:
            # contents after a discard are undefined: zero them afterwards
            cmds += ["-c", "discard %d %d" % (off, length),
                     "-c", "write -z %d %d" % (off, length)]
            ref[off:off + length] = bytes(length)
    ferry("io", *cmds, img)
    (tmp_path / "ref.raw").write_bytes(bytes(ref))
    c = check_json(qemu_img, img)
    assert c.get("corruptions", 0) == 0 and c.get("leaks", 0) == 0, c
    qemu_img("compare", "-f", "raw", "-F", "qcow2", tmp_path / "ref.raw", img)
    ours, _ = ferry_check(ferry, img)
    assert int(ours["corruptions"]) == 0 and int(ours["leaks"]) == 0
