"""ferry nbd judged by Debian's NBD clients: nbdinfo, nbdcopy, qemu-io and
qemu-img read and write through it, and qemu-nbd serving the same image is
the reference for what they should see."""
import json
import os
import subprocess

import pytest

import nbdproto
from conftest import ferry_path, need, pattern_file, run
from nbdutil import ferry_nbd, qemu_nbd, sparse_image

MiB = 1 << 20
EXTENTS = [(1 * MiB, MiB), (10 * MiB, 8192), (20 * MiB, 3 * MiB)]


def nbdinfo(*args, check=True):
    need("nbdinfo")
    return run(["nbdinfo"] + [str(a) for a in args], check=check)


def nbdinfo_json(uri):
    return json.loads(nbdinfo("--json", uri).out)


def test_nbdinfo_list_shows_name_description_and_flags(tmp_path):
    img = sparse_image(tmp_path / "d.raw", 64 * MiB, EXTENTS)
    with ferry_nbd(tmp_path, img, "-D", "backup disk", "-e", "0",
                   name="disk0") as srv:
        out = nbdinfo("--list", "--json", srv.uri()).out
    with ferry_nbd(tmp_path, img, "-e", "1", tag="one") as srv:
        single = json.loads(nbdinfo("--json", srv.uri()).out)
    # one connection at a time: clients must not be told to open more
    assert single["exports"][0]["can_multi_conn"] is False
    info = json.loads(out)
    assert info["protocol"] == "newstyle-fixed"
    exports = info["exports"]
    assert len(exports) == 1
    e = exports[0]
    assert e["export-name"] == "disk0"
    assert e["description"] == "backup disk"
    assert e["export-size"] == 64 * MiB
    assert e["is_read_only"] is False
    for cap in ("can_flush", "can_fua", "can_trim", "can_zero",
                "can_fast_zero", "can_df", "can_cache", "can_multi_conn"):
        assert e[cap] is True, cap
    assert e["block_size_maximum"] == 32 * MiB
    assert "base:allocation" in e["contexts"]


def test_nbdinfo_matches_qemu_nbd_on_the_same_image(tmp_path):
    img = sparse_image(tmp_path / "d.raw", 64 * MiB, EXTENTS)
    copy = tmp_path / "copy.raw"
    subprocess.run(["cp", "--sparse=always", str(img), str(copy)], check=True)
    with ferry_nbd(tmp_path, img, "-r") as ours, \
            qemu_nbd(tmp_path, copy, "-r") as theirs:
        a, b = nbdinfo_json(ours.uri()), nbdinfo_json(theirs.uri())
        map_a = nbdinfo("--map", "--json", ours.uri()).out
        map_b = nbdinfo("--map", "--json", theirs.uri()).out
    ea, eb = a["exports"][0], b["exports"][0]
    for key in ("export-size", "is_read_only", "can_flush", "can_fua",
                "can_trim", "can_zero", "can_df", "can_cache",
                "block_size_minimum", "block_size_preferred",
                "block_size_maximum", "contexts"):
        assert ea[key] == eb[key], key
    assert json.loads(map_a) == json.loads(map_b)
    # and the map is the file's real layout, not "all data"
    assert [m["type"] for m in json.loads(map_a)] == [3, 0, 3, 0, 3, 0, 3]


def test_qemu_io_writes_land_in_the_file(tmp_path, qemu_io):
    img = tmp_path / "w.raw"
    pattern_file(img, 8 * MiB)
    with ferry_nbd(tmp_path, img) as srv:
        qemu_io("-f", "raw",
                "-c", "write -P 0xab 4096 64k",
                "-c", "write -z 1M 128k",
                "-c", "aio_write -P 0x11 2M 4k",
                "-c", "aio_write -P 0x22 3M 4k",
                "-c", "aio_flush",
                "-c", "write -P 0x33 -f 5M 8k",       # FUA
                "-c", "read -P 0xab 4096 64k",
                "-c", "read -P 0 1M 128k",
                "-c", "flush", srv.uri())
    data = open(img, "rb").read()
    assert data[4096:4096 + 65536] == b"\xab" * 65536
    assert data[MiB:MiB + 131072] == bytes(131072)
    assert data[2 * MiB:2 * MiB + 4096] == b"\x11" * 4096
    assert data[3 * MiB:3 * MiB + 4096] == b"\x22" * 4096
    assert data[5 * MiB:5 * MiB + 8192] == b"\x33" * 8192


def test_qemu_io_reads_what_the_file_holds(tmp_path, qemu_io):
    img = tmp_path / "r.raw"
    with open(img, "wb") as f:
        f.write(b"\x5a" * MiB + b"\xa5" * MiB)
    with ferry_nbd(tmp_path, img, "-r") as srv:
        qemu_io("-r", "-f", "raw", "-c", "read -P 0x5a 0 1M",
                "-c", "read -P 0xa5 1M 1M", "-c", "read -P 0x5a 1000 3",
                srv.uri())
        bad = qemu_io("-r", "-f", "raw", "-c", "read -P 0x5a 1M 4k",
                      srv.uri(), check=False)
    assert "Pattern verification failed" in bad.out + bad.err


def test_nbdcopy_roundtrip_both_directions(tmp_path):
    need("nbdcopy")
    src = tmp_path / "src.raw"
    pattern_file(src, 24 * MiB)
    target = tmp_path / "target.raw"
    with open(target, "wb") as f:
        f.truncate(24 * MiB)
    back = tmp_path / "back.raw"
    with ferry_nbd(tmp_path, target, "-e", "4", tag="t") as srv:
        run(["nbdcopy", "--flush", str(src), srv.uri()])
        run(["nbdcopy", srv.uri(), str(back)])
        run(["nbdcopy", "--connections=4", srv.uri(), str(tmp_path / "b4")])
    assert open(target, "rb").read() == open(src, "rb").read()
    assert open(back, "rb").read() == open(src, "rb").read()
    assert open(tmp_path / "b4", "rb").read() == open(src, "rb").read()


def test_nbdcopy_keeps_holes_sparse(tmp_path):
    need("nbdcopy")
    img = sparse_image(tmp_path / "s.raw", 256 * MiB, [(100 * MiB, MiB)])
    with ferry_nbd(tmp_path, img, "-r") as srv:
        run(["nbdcopy", srv.uri(), str(tmp_path / "out.raw")])
    st = os.stat(tmp_path / "out.raw")
    assert st.st_size == 256 * MiB
    assert st.st_blocks * 512 <= 8 * MiB
    assert open(tmp_path / "out.raw", "rb").read() == open(img, "rb").read()


def test_qemu_img_convert_to_and_from_the_export(tmp_path, qemu_img):
    src = tmp_path / "src.raw"
    pattern_file(src, 8 * MiB)
    target = tmp_path / "t.raw"
    qemu_img("create", "-f", "raw", target, "8M")
    with ferry_nbd(tmp_path, target, tcp=True) as srv:
        qemu_img("convert", "-n", "-f", "raw", "-O", "raw", src, srv.uri())
        qemu_img("convert", "-O", "qcow2", srv.uri(), tmp_path / "out.qcow2")
        qemu_img("compare", "-f", "raw", "-F", "raw", src, srv.uri())
    qemu_img("compare", src, tmp_path / "out.qcow2")


def test_read_only_export_refuses_writes(tmp_path, qemu_io):
    img = tmp_path / "ro.raw"
    pattern_file(img, MiB)
    before = open(img, "rb").read()
    with ferry_nbd(tmp_path, img, "-r") as srv:
        r = qemu_io("-f", "raw", "-c", "write -P 1 0 4k", srv.uri(),
                    check=False)
        info = json.loads(nbdinfo("--json", srv.uri()).out)
    assert info["exports"][0]["is_read_only"] is True
    assert "Operation not permitted" in r.out + r.err or r.rc != 0
    assert open(img, "rb").read() == before


def test_second_writer_on_the_image_is_refused(tmp_path, ferry):
    img = tmp_path / "lock.raw"
    pattern_file(img, MiB)
    with ferry_nbd(tmp_path, img):
        r = ferry("nbd", "-f", "raw", "-k", tmp_path / "other.sock", img,
                  check=False)
        assert r.rc == 1
        assert "in use" in r.err and r.err.count("\n") == 1
        need("qemu-io")
        r = run(["qemu-io", "-f", "raw", "-c", "write 0 4k", str(img)],
                check=False)
        assert "lock" in (r.out + r.err).lower()
    # a reader (-r) may share with another reader
    with ferry_nbd(tmp_path, img, "-r", tag="r1"), \
            ferry_nbd(tmp_path, img, "-r", tag="r2") as srv:
        nbdinfo(srv.uri())


def test_unknown_export_name_is_a_clear_error(tmp_path):
    img = tmp_path / "x.raw"
    pattern_file(img, MiB)
    with ferry_nbd(tmp_path, img, name="right") as srv:
        r = nbdinfo(srv.uri(name="wrong"), check=False)
        assert r.rc != 0
        assert "No such file or directory for export: wrong" in r.err
        # the reply carries a message naming the export for the human
        c = nbdproto.Client(srv.sock)
        c.handshake()
        c.send_option(nbdproto.OPT_GO, c.info_data("wrong", ()))
        opt, typ, msg = c.option_reply()
        assert typ == nbdproto.REP_ERR_UNKNOWN
        assert msg == b"export 'wrong' not present"
        c.close()
        nbdinfo(srv.uri())


def test_without_persistent_the_server_exits_after_its_client(tmp_path):
    img = tmp_path / "once.raw"
    pattern_file(img, MiB)
    with ferry_nbd(tmp_path, img, persistent=False, probe=False) as srv:
        import time
        for _ in range(200):
            if os.path.exists(srv.sock):
                break
            time.sleep(0.02)
        nbdinfo(srv.uri())
        srv.proc.wait(10)
        assert srv.proc.returncode == 0


def test_tcp_and_export_name(tmp_path, qemu_io):
    img = tmp_path / "tcp.raw"
    pattern_file(img, 2 * MiB)
    with ferry_nbd(tmp_path, img, name="vol", tcp=True) as srv:
        qemu_io("-f", "raw", "-c", "write -P 7 0 4k", "-c", "read -P 7 0 4k",
                srv.uri())
        info = json.loads(nbdinfo("--json", srv.uri()).out)
    assert info["exports"][0]["export-name"] == "vol"


def test_null_co_export_reads_zeroes_as_holes(tmp_path):
    spec = "driver=null-co,size=1G"
    with ferry_nbd(tmp_path, spec, "--image-opts", fmt=None,
                   tag="null") as srv:
        info = json.loads(nbdinfo("--json", srv.uri()).out)
        m = json.loads(nbdinfo("--map", "--json", srv.uri()).out)
    assert info["exports"][0]["export-size"] == 1 << 30
    assert m == [{"offset": 0, "length": 1 << 30, "type": 3,
                  "description": "hole,zero"}]


def test_socket_activation_with_nbdinfo(tmp_path):
    """nbdinfo [ CMD ] starts the server with systemd socket activation."""
    img = tmp_path / "sa.raw"
    pattern_file(img, 3 * MiB)
    out = nbdinfo("--json", "--", "[", ferry_path(), "nbd", "-f", "raw", "-r",
                  str(img), "]").out
    assert json.loads(out)["exports"][0]["export-size"] == 3 * MiB


def test_fork_and_pid_file(tmp_path, ferry):
    import signal
    import time
    img = tmp_path / "fork.raw"
    pattern_file(img, MiB)
    sock = tmp_path / "fork.sock"
    pidfile = tmp_path / "nbd.pid"
    with open(tmp_path / "fork.log", "w") as log:
        r = subprocess.run([str(a) for a in (
            ferry_path(), "nbd", "--fork",
            "--pid-file", pidfile, "-t", "-f", "raw", "-k", sock, img)],
            stdout=log, stderr=log, timeout=30)
    assert r.returncode == 0
    pid = int(pidfile.read_text())
    try:
        assert os.path.exists(sock)
        info = json.loads(nbdinfo("--json", "nbd+unix:///?socket=%s" % sock)
                          .out)
        assert info["exports"][0]["export-size"] == MiB
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("forked server did not exit on SIGTERM")
    assert not os.path.exists(sock)


def test_detect_zeroes_unmap_punches_holes(tmp_path, qemu_io):
    img = tmp_path / "dz.raw"
    pattern_file(img, 8 * MiB)
    with ferry_nbd(tmp_path, img, "--discard=unmap",
                   "--detect-zeroes=unmap") as srv:
        qemu_io("-f", "raw", "-c", "write -P 0 1M 2M", "-c", "flush",
                srv.uri())
        m = json.loads(nbdinfo("--map", "--json", srv.uri()).out)
    holes = [(e["offset"], e["length"]) for e in m if e["type"] & 1]
    assert holes == [(MiB, 2 * MiB)]
    assert open(img, "rb").read()[MiB:3 * MiB] == bytes(2 * MiB)


def test_offset_exports_the_tail_of_a_raw_image(tmp_path, qemu_io):
    img = tmp_path / "off.raw"
    with open(img, "wb") as f:
        f.write(b"\x01" * MiB + b"\x02" * MiB)
    with ferry_nbd(tmp_path, img, "-o", "1M") as srv:
        info = json.loads(nbdinfo("--json", srv.uri()).out)
        qemu_io("-f", "raw", "-c", "read -P 2 0 1M", srv.uri())
    assert info["exports"][0]["export-size"] == MiB


def test_missing_bitmap_is_a_clear_error(tmp_path, ferry):
    img = tmp_path / "nb.raw"
    pattern_file(img, MiB)
    r = ferry("nbd", "-f", "raw", "-B", "nosuch", "-k", tmp_path / "s.sock",
              img, check=False)
    assert r.rc == 1 and r.err.count("\n") == 1
    assert "bitmap 'nosuch' not found in '%s'" % img in r.err
