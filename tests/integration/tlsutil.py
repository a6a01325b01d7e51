"""Certificates for TLS tests, made with openssl: a CA, a server
certificate for localhost, a client certificate, and one from another CA,
laid out as QEMU, qemu-nbd and libnbd read them."""
import os
import subprocess

from conftest import need


def openssl(*args, cwd):
    need("openssl")
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True,
                   capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
            "%s-key.pem" % name, "-out", "%s-cert.pem" % name, "-days", "2",
            "-subj", "/CN=ferry test %s" % name, cwd=d)


def make_cert(d, ca, name, cn, ext):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout",
            "%s-key.pem" % name, "-out", "%s.csr" % name, "-subj",
            "/CN=%s" % cn, cwd=d)
    with open(os.path.join(d, "%s.ext" % name), "w") as f:
        f.write(ext)
    openssl("x509", "-req", "-in", "%s.csr" % name, "-CA",
            "%s-cert.pem" % ca, "-CAkey", "%s-key.pem" % ca,
            "-CAcreateserial", "-out", "%s-cert.pem" % name, "-days", "2",
            "-extfile", "%s.ext" % name, cwd=d)


def client_dir(d, sub, ca, client=None):
    """A directory as libnbd and QEMU read it: ca-cert.pem, client-*.pem."""
    out = os.path.join(d, sub)
    os.makedirs(out, exist_ok=True)
    for src, dst in ((ca + "-cert.pem", "ca-cert.pem"),) + (
            ((client + "-cert.pem", "client-cert.pem"),
             (client + "-key.pem", "client-key.pem")) if client else ()):
        with open(os.path.join(d, src), "rb") as f:
            data = f.read()
        with open(os.path.join(out, dst), "wb") as f:
            f.write(data)
    return out


def build_pki(d):
    """Everything in directory d; returns the paths by role."""
    make_ca(d, "ca")
    make_ca(d, "otherca")
    make_cert(d, "ca", "server", "localhost",
              "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
              "extendedKeyUsage=serverAuth\n")
    make_cert(d, "ca", "client", "client", "extendedKeyUsage=clientAuth\n")
    make_cert(d, "otherca", "rogue", "rogue", "extendedKeyUsage=clientAuth\n")
    pki = {
        "dir": d,
        "cert": os.path.join(d, "server-cert.pem"),
        "key": os.path.join(d, "server-key.pem"),
        "ca": os.path.join(d, "ca-cert.pem"),
        "client": client_dir(d, "client", "ca", "client"),
        "anon": client_dir(d, "anon", "ca"),
        "rogue": client_dir(d, "rogue", "ca", "rogue"),
        "wrongca": client_dir(d, "wrongca", "otherca", "client"),
    }
    sdir = os.path.join(d, "server")
    os.makedirs(sdir)
    for n in ("ca-cert.pem", "server-cert.pem", "server-key.pem"):
        os.link(os.path.join(d, n), os.path.join(sdir, n))
    pki["server"] = sdir
    return pki


