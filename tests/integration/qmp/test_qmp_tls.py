"""TLS on the storage daemon's NBD server, configured over QMP as QEMU
does it: object-add tls-creds-x509 / tls-creds-psk, then nbd-server-start
tls-creds=ID.  The same script runs against ferry and qemu-storage-daemon;
nbdinfo is the client, with certificates the test makes with openssl."""
import subprocess

import pytest

from conftest import need
from jobutil import MiB, add_qcow2, qcow2
from qmpclient import QmpError, any_daemon  # noqa: F401
from tlsutil import build_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return build_pki(str(tmp_path_factory.mktemp("pki")))


def nbdinfo(uri):
    need("nbdinfo")
    return subprocess.run(["nbdinfo", "--size", uri], capture_output=True,
                          text=True, timeout=60)


def serve(q, tmp_path, creds):
    sock = str(tmp_path / "tls.sock")
    add_qcow2(q, "d", qcow2(tmp_path / "d.qcow2", 4 * MiB))
    q.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": sock}},
          tls_creds=creds)
    q.cmd("block-export-add", type="nbd", id="e", node_name="d", name="e")
    return sock


def test_x509_creds_object(any_daemon, tmp_path, pki):
    q = any_daemon.qmp
    q.cmd_args("object-add", {"qom-type": "tls-creds-x509", "id": "tls0",
                              "dir": pki["server"], "endpoint": "server",
                              "verify-peer": True})
    sock = serve(q, tmp_path, "tls0")
    ok = nbdinfo("nbds+unix:///e?socket=%s&tls-certificates=%s"
                 % (sock, pki["client"]))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(4 * MiB)
    plain = nbdinfo("nbd+unix:///e?socket=%s" % sock)
    assert plain.returncode != 0
    rogue = nbdinfo("nbds+unix:///e?socket=%s&tls-certificates=%s"
                    % (sock, pki["rogue"]))
    assert rogue.returncode != 0


def test_psk_creds_object(any_daemon, tmp_path):
    pskdir = tmp_path / "psk"
    pskdir.mkdir()
    keys = pskdir / "keys.psk"
    keys.write_text("alice:" + "ab" * 32 + "\n")
    q = any_daemon.qmp
    q.cmd_args("object-add", {"qom-type": "tls-creds-psk", "id": "p0",
                              "dir": str(pskdir), "endpoint": "server"})
    sock = serve(q, tmp_path, "p0")
    ok = nbdinfo("nbds+unix://alice@/e?socket=%s&tls-psk-file=%s"
                 % (sock, keys))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(4 * MiB)


def test_creds_refusals(any_daemon, tmp_path, pki):
    q = any_daemon.qmp
    sock = str(tmp_path / "x.sock")
    addr = {"type": "unix", "data": {"path": sock}}
    with pytest.raises(QmpError) as e:
        q.cmd("nbd-server-start", addr=addr, tls_creds="nosuch")
    assert e.value.cls == "GenericError"
    q.cmd_args("object-add", {"qom-type": "tls-creds-x509", "id": "c0",
                              "dir": pki["client"], "endpoint": "client"})
    with pytest.raises(QmpError) as e:
        q.cmd("nbd-server-start", addr=addr, tls_creds="c0")
    assert "server endpoint" in e.value.desc
    with pytest.raises(QmpError):
        q.cmd_args("object-add", {"qom-type": "tls-creds-x509", "id": "c0",
                                  "dir": pki["client"],
                                  "endpoint": "client"})
    q.cmd("object-del", id="c0")
    with pytest.raises(QmpError):
        q.cmd("object-del", id="c0")
