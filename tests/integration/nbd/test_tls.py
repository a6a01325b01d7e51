"""TLS on ferry nbd (X.509 with and without client certificates, PSK),
judged by nbdinfo, nbdcopy, qemu-img and qemu-io, with certificates this
test makes with openssl; and ferry's client driver speaking TLS to
qemu-nbd and to ferry."""
import json

import pytest

import nbdproto as P
from conftest import need, pattern_file, run
from nbdutil import ferry_nbd, qemu_nbd
from tlsutil import build_pki

MiB = 1 << 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return build_pki(str(tmp_path_factory.mktemp("pki")))


def tls_uri(srv, certdir):
    return "nbds://127.0.0.1:%d/?tls-certificates=%s" % (srv.port, certdir)


def x509_args(pki, ca=True):
    args = ["--tls-cert", pki["cert"], "--tls-key", pki["key"]]
    return args + (["--tls-ca", pki["ca"]] if ca else [])


def test_x509_nbdinfo_and_nbdcopy(tmp_path, pki):
    need("nbdcopy")
    img = tmp_path / "d.raw"
    src = tmp_path / "src.raw"
    pattern_file(src, 24 * MiB)
    with open(img, "wb") as f:
        f.truncate(24 * MiB)
    with ferry_nbd(tmp_path, img, "-e", "0", *x509_args(pki), tcp=True) as s:
        uri = tls_uri(s, pki["client"])
        out = run(["nbdinfo", uri]).out
        assert "newstyle-fixed with TLS" in out
        run(["nbdcopy", str(src), uri])
        run(["nbdcopy", "--connections=4", uri, str(tmp_path / "back.raw")])
        assert s.alive()
    assert open(tmp_path / "back.raw", "rb").read() == open(src, "rb").read()
    assert open(img, "rb").read() == open(src, "rb").read()


def test_x509_over_unix_socket(tmp_path, pki):
    img = tmp_path / "u.raw"
    pattern_file(img, MiB)
    with ferry_nbd(tmp_path, img, *x509_args(pki, ca=False)) as s:
        uri = "nbds+unix:///?socket=%s&tls-certificates=%s" % (s.sock,
                                                               pki["anon"])
        out = run(["nbdinfo", "--json", uri]).out
    assert json.loads(out)["exports"][0]["export-size"] == MiB


def test_x509_qemu_img_and_qemu_io(tmp_path, pki, qemu_img, qemu_io):
    img = tmp_path / "q.raw"
    pattern_file(img, 4 * MiB)
    obj = "tls-creds-x509,id=tls0,dir=%s,endpoint=client" % pki["client"]
    with ferry_nbd(tmp_path, img, *x509_args(pki), tcp=True) as s:
        opts = ("driver=raw,file.driver=nbd,file.server.type=inet,"
                "file.server.host=127.0.0.1,file.server.port=%d,"
                "file.tls-creds=tls0" % s.port)
        info = qemu_img("info", "--output=json", "--object", obj,
                        "--image-opts", opts).json()
        assert info["virtual-size"] == 4 * MiB
        qemu_io("--object", obj, "--image-opts", opts,
                "-c", "write -P 0x42 1M 256k", "-c", "read -P 0x42 1M 256k",
                "-c", "flush")
    assert open(img, "rb").read()[MiB:MiB + 262144] == b"\x42" * 262144


def test_plain_clients_are_told_tls_is_required(tmp_path, pki):
    img = tmp_path / "p.raw"
    pattern_file(img, MiB)
    with ferry_nbd(tmp_path, img, "-e", "0", *x509_args(pki)) as s:
        c = P.Client(s.sock)
        c.handshake()
        for opt, data in ((P.OPT_LIST, b""), (P.OPT_STRUCTURED_REPLY, b""),
                          (P.OPT_GO, c.info_data("", ()))):
            typ, _ = c.option(opt, data)
            assert typ == P.REP_ERR_TLS_REQD
        # EXPORT_NAME cannot carry an error: the server hangs up
        c.send_option(P.OPT_EXPORT_NAME, b"")
        with pytest.raises((P.ProtocolError, ConnectionError)):
            c.recvall(1)
        c.close()
        r = run(["nbdinfo", s.uri()], check=False)
        assert r.rc != 0 and "newstyle-fixed without TLS" in r.out
        # and the server still serves those who speak TLS
        uri = "nbds+unix:///?socket=%s&tls-certificates=%s" % (s.sock,
                                                               pki["client"])
        run(["nbdinfo", uri])


def test_client_certificates_are_checked_against_the_ca(tmp_path, pki):
    img = tmp_path / "c.raw"
    pattern_file(img, MiB)
    with ferry_nbd(tmp_path, img, "-e", "0", *x509_args(pki), tcp=True) as s:
        for bad in ("anon", "rogue"):
            r = run(["nbdinfo", tls_uri(s, pki[bad])], check=False)
            assert r.rc != 0, bad
        # a client that does not trust our CA refuses us
        r = run(["nbdinfo", tls_uri(s, pki["wrongca"])], check=False)
        assert r.rc != 0
        run(["nbdinfo", tls_uri(s, pki["client"])])
        assert s.alive()
    assert "TLS handshake failed" in s.log()


def test_psk_with_nbdinfo_and_qemu_img(tmp_path, qemu_img):
    img = tmp_path / "k.raw"
    pattern_file(img, 2 * MiB)
    keys = tmp_path / "keys.psk"
    keys.write_text("alice:%s\nbob:%s\n" % ("ab" * 32, "cd" * 32))
    wrong = tmp_path / "wrong.psk"
    wrong.write_text("alice:%s\n" % ("ef" * 32))
    pskdir = tmp_path / "pskdir"
    pskdir.mkdir()
    (pskdir / "keys.psk").write_text(keys.read_text())
    with ferry_nbd(tmp_path, img, "-e", "0", "--tls-psk", keys,
                   tcp=True) as s:
        uri = "nbds://alice@127.0.0.1:%d/?tls-psk-file=%s" % (s.port, keys)
        assert "with TLS" in run(["nbdinfo", uri]).out
        r = run(["nbdinfo", "nbds://alice@127.0.0.1:%d/?tls-psk-file=%s"
                 % (s.port, wrong)], check=False)
        assert r.rc != 0
        r = run(["nbdinfo", "nbds://carol@127.0.0.1:%d/?tls-psk-file=%s"
                 % (s.port, keys)], check=False)
        assert r.rc != 0
        obj = ("tls-creds-psk,id=tls0,dir=%s,username=bob,endpoint=client"
               % pskdir)
        info = qemu_img("info", "--output=json", "--object", obj,
                        "--image-opts",
                        "driver=nbd,server.type=inet,server.host=127.0.0.1,"
                        "server.port=%d,tls-creds=tls0" % s.port).json()
        assert info["virtual-size"] == 2 * MiB
        assert s.alive()


def test_bad_tls_options_are_clear_errors(tmp_path, ferry, pki):
    img = tmp_path / "b.raw"
    pattern_file(img, MiB)
    r = ferry("nbd", "--tls-cert", pki["cert"], img, check=False)
    assert r.rc == 1 and "--tls-key" in r.err
    r = ferry("nbd", "--tls-cert", pki["cert"], "--tls-key", pki["ca"], img,
              check=False)
    assert r.rc == 1 and "TLS key" in r.err and r.err.count("\n") == 1
    bad = tmp_path / "bad.psk"
    bad.write_text("alice:xyz\n")
    r = ferry("nbd", "--tls-psk", bad, img, check=False)
    assert r.rc == 1 and "line 1" in r.err


def test_ferry_driver_speaks_tls_to_qemu_nbd(tmp_path, pki, ferry):
    img = tmp_path / "qt.raw"
    pattern_file(img, 3 * MiB)
    obj = "tls-creds-x509,id=tls0,dir=%s,endpoint=server" % pki["server"]
    with qemu_nbd(tmp_path, img, "-r", "--object", obj, "--tls-creds",
                  "tls0", tcp=True) as q:
        uri = tls_uri(q, pki["client"])
        info = ferry("img", "info", "--output=json", uri).json()
        assert info["virtual-size"] == 3 * MiB
        spec = ("driver=nbd,server.type=inet,server.host=127.0.0.1,"
                "server.port=%d,tls-certificates=%s" % (q.port,
                                                        pki["client"]))
        assert ferry("img", "info", "--output=json",
                     spec).json()["virtual-size"] == 3 * MiB
        r = ferry("img", "info", q.uri(), check=False)
        assert r.rc == 1 and "TLS" in r.err


def test_ferry_driver_to_ferry_server_with_psk(tmp_path, qemu_io):
    img = tmp_path / "fp.raw"
    pattern_file(img, 4 * MiB)
    keys = tmp_path / "k.psk"
    keys.write_text("alice:%s\n" % ("12" * 32))
    with ferry_nbd(tmp_path, img, "-e", "0", "--tls-psk", keys, tcp=True,
                   tag="tls") as s:
        remote = "nbds://alice@127.0.0.1:%d/?tls-psk-file=%s" % (s.port, keys)
        with ferry_nbd(tmp_path, remote, fmt="raw", tag="proxy") as p:
            qemu_io("-f", "raw", "-c", "write -P 0x24 0 2M", "-c", "flush",
                    p.uri())
    assert open(img, "rb").read()[:2 * MiB] == b"\x24" * (2 * MiB)


@pytest.mark.parametrize("server", ["ferry", "qemu-nbd"])
def test_qemu_nbd_style_object_and_tls_creds(tmp_path, pki, server):
    """--object tls-creds-x509,...,endpoint=server --tls-creds ID, the way
    qemu-nbd is started; the same command line works for both."""
    img = tmp_path / "o.raw"
    pattern_file(img, 2 * MiB)
    obj = ("tls-creds-x509,id=tls0,dir=%s,endpoint=server,verify-peer=on"
           % pki["server"])
    start = ferry_nbd if server == "ferry" else qemu_nbd
    with start(tmp_path, img, "-r", "--object", obj, "--tls-creds", "tls0",
               tcp=True) as s:
        r = run(["nbdinfo", "--size", tls_uri(s, pki["client"])])
        assert r.out.strip() == str(2 * MiB)
        r = run(["nbdinfo", "--size", tls_uri(s, pki["rogue"])], check=False)
        assert r.rc != 0


def test_bad_tls_objects_are_clear_errors(tmp_path, ferry, pki):
    img = tmp_path / "bo.raw"
    pattern_file(img, MiB)
    r = ferry("nbd", "--object", "tls-creds-x509,id=t,dir=%s" % pki["client"],
              "--tls-creds", "t", img, check=False)
    assert r.rc == 1 and "server endpoint" in r.err
    r = ferry("nbd", "--object", "secret,id=s,data=x", img, check=False)
    assert r.rc == 1 and "tls-creds-x509" in r.err
    r = ferry("nbd", "--tls-creds", "nosuch", img, check=False)
    assert r.rc == 1 and "nosuch" in r.err
