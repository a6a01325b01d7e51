"""The nbd client driver against real servers (qemu-nbd, nbdkit file and
memory plugins).  ferry has no qemu-io of its own, so the driver is driven
by 'ferry img info' and by 'ferry nbd' exporting the remote node again:
then Debian's clients read and write through ferry's driver, and what
they see is checked on the original server and file."""
import json
import subprocess

import pytest

from conftest import need, pattern_file, run
from nbdutil import ferry_nbd, nbdkit, qemu_nbd, sparse_image

MiB = 1 << 20


def nbdinfo(*args):
    need("nbdinfo")
    return run(["nbdinfo"] + [str(a) for a in args])


def test_img_info_through_every_spelling(tmp_path, ferry, qemu_img):
    img = tmp_path / "d.raw"
    pattern_file(img, 5 * MiB)
    with qemu_nbd(tmp_path, img, "-r", name="exp") as srv:
        specs = [
            srv.uri(),
            "nbd:unix:%s:exportname=exp" % srv.sock,
            "json:" + json.dumps({"driver": "nbd", "export": "exp",
                                  "server": {"type": "unix",
                                             "path": srv.sock}}),
            "driver=nbd,server.type=unix,server.path=%s,export=exp"
            % srv.sock,
            "driver=raw,file.driver=nbd,file.path=%s,file.export=exp"
            % srv.sock,
        ]
        for spec in specs:
            info = ferry("img", "info", "--output=json", spec).json()
            assert info["virtual-size"] == 5 * MiB, spec
        theirs = qemu_img("info", srv.uri()).out.splitlines()
        ours = ferry("img", "info", srv.uri()).out.splitlines()
    assert ours[:4] == theirs[:4]      # image, format, size, disk size


def test_img_info_over_tcp(tmp_path, ferry):
    img = tmp_path / "t.raw"
    pattern_file(img, 3 * MiB)
    with qemu_nbd(tmp_path, img, "-r", tcp=True) as srv:
        info = ferry("img", "info", "--output=json", srv.uri()).json()
        assert info["virtual-size"] == 3 * MiB
        spec = "driver=nbd,server.type=inet,server.host=127.0.0.1," \
               "server.port=%d" % srv.port
        info = ferry("img", "info", "--output=json", spec).json()
        assert info["virtual-size"] == 3 * MiB
        legacy = "nbd:127.0.0.1:%d" % srv.port
        info = ferry("img", "info", "--output=json", legacy).json()
        assert info["virtual-size"] == 3 * MiB


def test_connection_errors_are_one_clear_line(tmp_path, ferry):
    img = tmp_path / "e.raw"
    pattern_file(img, MiB)
    with qemu_nbd(tmp_path, img, "-r", name="exp") as srv:
        r = ferry("img", "info", srv.uri(name="nope"), check=False)
        assert r.rc == 1 and r.err.count("\n") == 1
        assert "no export named 'nope'" in r.err
        r = ferry("nbd", "-k", tmp_path / "x.sock", srv.uri(), check=False)
        assert r.rc == 1 and "read-only" in r.err
    r = ferry("img", "info", "nbd+unix:///?socket=%s" % (tmp_path / "none"),
              check=False)
    assert r.rc == 1 and r.err.count("\n") == 1
    assert "cannot connect" in r.err
    r = ferry("img", "info", "driver=nbd,server.type=unix", check=False)
    assert r.rc == 1 and "server.path" in r.err


def test_block_status_through_the_driver_matches_qemu_nbd(tmp_path):
    """ferry nbd re-exports a qemu-nbd export: the map nbdinfo sees through
    ferry's client driver and ferry's server is qemu-nbd's own."""
    img = sparse_image(tmp_path / "s.raw", 64 * MiB,
                       [(MiB, MiB), (10 * MiB, 8192), (40 * MiB, 3 * MiB)])
    with qemu_nbd(tmp_path, img, "-r") as q, \
            ferry_nbd(tmp_path, q.uri(), "-r", fmt="raw") as f:
        direct = json.loads(nbdinfo("--map", "--json", q.uri()).out)
        proxied = json.loads(nbdinfo("--map", "--json", f.uri()).out)
        run(["nbdcopy", f.uri(), str(tmp_path / "copy.raw")])
    assert proxied == direct
    assert open(tmp_path / "copy.raw", "rb").read() == open(img, "rb").read()


def test_writes_through_the_driver_reach_nbdkit_memory(tmp_path, qemu_io):
    need("nbdcopy")
    with nbdkit(tmp_path, "memory", "32M") as k, \
            ferry_nbd(tmp_path, "nbd+unix:///?socket=%s" % k.sock,
                      fmt="raw") as f:
        qemu_io("-f", "raw", "-c", "write -P 0x61 0 1M",
                "-c", "write -P 0x62 -f 8M 64k",
                "-c", "write -z 1M 1M",
                "-c", "aio_write -P 0x63 20M 4k", "-c", "aio_flush",
                "-c", "discard 30M 1M",
                "-c", "read -P 0x61 0 1M", "-c", "flush", f.uri())
        run(["nbdcopy", "nbd+unix:///?socket=%s" % k.sock,
             str(tmp_path / "mem.raw")])
    data = open(tmp_path / "mem.raw", "rb").read()
    assert data[:MiB] == b"a" * MiB
    assert data[MiB:2 * MiB] == bytes(MiB)
    assert data[8 * MiB:8 * MiB + 65536] == b"b" * 65536
    assert data[20 * MiB:20 * MiB + 4096] == b"c" * 4096


def test_nbdkit_file_plugin_roundtrip(tmp_path, qemu_io):
    img = tmp_path / "k.raw"
    pattern_file(img, 16 * MiB)
    original = open(img, "rb").read()
    with nbdkit(tmp_path, "file", img) as k, \
            ferry_nbd(tmp_path, k.uri(name=""), fmt="raw") as f:
        # reads through ferry's driver see the file
        run(["nbdcopy", f.uri(), str(tmp_path / "out.raw")])
        assert open(tmp_path / "out.raw", "rb").read() == original
        qemu_io("-f", "raw", "-c", "write -P 0x7e 5M 12k", f.uri())
    assert open(img, "rb").read()[5 * MiB:5 * MiB + 12288] == b"\x7e" * 12288


def test_dirty_bitmap_status_through_x_dirty_bitmap(tmp_path, ferry):
    """QEMU's x-dirty-bitmap: block status reports the bitmap (dirty shows
    as not-data); ferry nbd on one side, ferry's driver on the other."""
    img = sparse_image(tmp_path / "b.raw", 8 * MiB, [(0, 8 * MiB)])
    with ferry_nbd(tmp_path, img, "--x-create-bitmap=b0", "-B", "b0",
                   tag="src") as src:
        need("qemu-io")
        run(["qemu-io", "-f", "raw", "-c", "write -P 1 2M 64k", src.uri()])
        spec = "json:" + json.dumps({
            "driver": "nbd", "server": {"type": "unix", "path": src.sock},
            "x-dirty-bitmap": "qemu:dirty-bitmap:b0"})
        with ferry_nbd(tmp_path, spec, "-r", fmt=None, tag="view") as view:
            m = json.loads(nbdinfo("--map", "--json", view.uri()).out)
    holes = [(e["offset"], e["length"]) for e in m if e["type"] & 1]
    assert holes == [(2 * MiB, 64 * 1024)]


def test_tls_creds_object_is_refused_with_a_hint(tmp_path, ferry):
    r = ferry("img", "info", "driver=nbd,server.type=unix,server.path=/x,"
              "tls-creds=tls0", check=False)
    assert r.rc == 1 and "tls-certificates" in r.err


def test_img_convert_from_nbd_is_sparse_and_identical(tmp_path, ferry,
                                                      qemu_img):
    """Block status through the driver drives a sparse copy: only the data
    is written, and qemu-img compare finds the copy identical."""
    src = sparse_image(tmp_path / "s.raw", 256 * MiB,
                       [(MiB, 2 * MiB), (50 * MiB, 2 * MiB),
                        (200 * MiB, 2 * MiB)])
    with qemu_nbd(tmp_path, src, "-r") as q:
        ferry("img", "convert", "-O", "qcow2", q.uri(),
              tmp_path / "out.qcow2")
        ferry("img", "convert", "-O", "raw", q.uri(), tmp_path / "out.raw")
    qemu_img("compare", src, tmp_path / "out.qcow2")
    qemu_img("check", tmp_path / "out.qcow2")
    qemu_img("compare", "-f", "raw", "-F", "raw", src, tmp_path / "out.raw")
    # 6 MiB of data in 256 MiB: the copies stay sparse
    import os
    assert os.stat(tmp_path / "out.qcow2").st_size < 16 * MiB
    assert os.stat(tmp_path / "out.raw").st_blocks * 512 < 16 * MiB


def test_img_convert_into_nbd_targets(tmp_path, ferry, qemu_img):
    src = tmp_path / "src.qcow2"
    qemu_img("create", "-f", "qcow2", src, "32M")
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x41 0 3M",
         "-c", "write -P 0x42 20M 1M", str(src)])
    target = tmp_path / "t.raw"
    with open(target, "wb") as f:
        f.truncate(32 * MiB)
    with qemu_nbd(tmp_path, target) as q:
        ferry("img", "convert", "-n", "-f", "qcow2", "-O", "raw", src,
              q.uri())
    qemu_img("compare", "-f", "qcow2", "-F", "raw", src, target)
    # into nbdkit's memory plugin, then read back with nbdcopy
    with nbdkit(tmp_path, "memory", "32M") as k:
        ferry("img", "convert", "-n", "-f", "qcow2", "-O", "raw", src,
              k.uri(name=""))
        run(["nbdcopy", k.uri(name=""), str(tmp_path / "mem.raw")])
    qemu_img("compare", "-f", "qcow2", "-F", "raw", src,
             tmp_path / "mem.raw")
