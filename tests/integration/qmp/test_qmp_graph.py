"""Graph commands: blockdev-add/del, query-named-block-nodes, block_resize,
against ferry and qemu-storage-daemon; images judged by qemu-img."""
import json

from jobutil import MiB, add_qcow2, chain, qcow2, sh
from qmpclient import any_daemon, both, shape  # noqa: F401


def nodes(q, flat=False):
    return {n["node-name"]: n for n in
            q.cmd("query-named-block-nodes", flat=flat)}


def test_add_query_del_releases_the_image(any_daemon, tmp_path):
    q = any_daemon.qmp
    img = qcow2(tmp_path / "a.qcow2", 8 * MiB)
    add_qcow2(q, "a", img)
    n = nodes(q)["a"]
    assert n["drv"] == "qcow2" and n["ro"] is False and n["file"] == img
    assert n["image"]["virtual-size"] == 8 * MiB
    assert n["image"]["cluster-size"] == 65536
    # the daemon holds the write lock: qemu-io cannot write meanwhile
    r = sh_rc(["qemu-io", "-c", "write 0 4k", img])
    assert r != 0
    q.cmd("blockdev-del", node_name="a")
    assert "a" not in nodes(q)
    sh("qemu-io", "-c", "write 0 4k", img)


def sh_rc(args):
    import subprocess
    return subprocess.run(args, capture_output=True, timeout=60).returncode


def test_add_errors(any_daemon, tmp_path):
    q = any_daemon.qmp
    img = qcow2(tmp_path / "a.qcow2", MiB)
    add_qcow2(q, "a", img)
    r = q.execute("blockdev-add", {"driver": "qcow2", "node-name": "a",
                                   "file": {"driver": "file",
                                            "filename": img}})
    assert r["error"]["class"] == "GenericError"
    r = q.execute("blockdev-add", {"driver": "file", "node-name": "x",
                                   "filename": str(tmp_path / "missing")})
    assert r["error"]["class"] == "GenericError"
    r = q.execute("blockdev-add", {"driver": "no-such-driver",
                                   "node-name": "y"})
    assert r["error"]["class"] == "GenericError"
    r = q.execute("blockdev-add", {"node-name": "z"})
    assert r["error"] == {"class": "GenericError",
                          "desc": "Parameter 'driver' is missing"}
    # a child the monitor did not add cannot be deleted on its own
    child = [k for k, v in nodes(q).items() if v["drv"] == "file"][0]
    r = q.execute("blockdev-del", {"node-name": child})
    assert r["error"]["class"] == "GenericError"


def test_node_in_use_cannot_be_deleted(any_daemon, tmp_path):
    q = any_daemon.qmp
    add_qcow2(q, "f", qcow2(tmp_path / "f.qcow2", MiB))
    q.cmd("blockdev-add", driver="raw", node_name="r", file="f")
    r = q.execute("blockdev-del", {"node-name": "f"})
    assert r["error"]["class"] == "GenericError"
    q.cmd("blockdev-del", node_name="r")
    q.cmd("blockdev-del", node_name="f")


def test_block_resize_grows_the_image(any_daemon, tmp_path):
    q = any_daemon.qmp
    img = qcow2(tmp_path / "g.qcow2", 8 * MiB)
    add_qcow2(q, "g", img)
    q.cmd("block_resize", node_name="g", size=24 * MiB)
    assert nodes(q)["g"]["image"]["virtual-size"] == 24 * MiB
    r = q.execute("block_resize", {"device": "nope", "size": MiB})
    assert r["error"] == {"class": "GenericError", "desc":
                          "Cannot find device='nope' nor node-name=''"}
    q.cmd("blockdev-del", node_name="g")
    info = json.loads(sh("qemu-img", "info", "--output=json", img))
    assert info["virtual-size"] == 24 * MiB
    sh("qemu-img", "check", img)


def test_backing_chain_nodes_have_qsd_shape(both, tmp_path):
    got = []
    for i, d in enumerate(both):
        sub = tmp_path / ("d%d" % i)
        sub.mkdir()
        base, mid, top = chain(sub)
        add_qcow2(d.qmp, "top", top)
        d.qmp.cmd("block-dirty-bitmap-add", node="top", name="b")
        full = nodes(d.qmp)["top"]
        flat = nodes(d.qmp, flat=True)["top"]
        assert full["backing_file_depth"] == 2
        assert full["image"]["backing-image"]["backing-image"]["filename"] \
            == base
        assert "backing-image" not in flat["image"]
        got.append((shape(full), shape(flat)))
    assert got[0] == got[1]


def test_image_info_lists_internal_snapshots(any_daemon, tmp_path):
    """ImageInfo under "image" is qemu-img info's: internal snapshots
    included, as QEMU's query-named-block-nodes shows them."""
    q = any_daemon.qmp
    img = qcow2(tmp_path / "s.qcow2", 8 * MiB)
    sh("qemu-img", "snapshot", "-c", "before", img)
    sh("qemu-img", "snapshot", "-c", "after", img)
    add_qcow2(q, "s", img)
    info = json.loads(sh("qemu-img", "info", "-U", "--output=json", img))
    image = nodes(q)["s"]["image"]
    assert [s["name"] for s in image["snapshots"]] == ["before", "after"]
    for ours, theirs in zip(image["snapshots"], info["snapshots"]):
        assert ours["id"] == theirs["id"]
        assert ours["vm-state-size"] == theirs["vm-state-size"]
        assert ours["date-sec"] == theirs["date-sec"]
    assert "snapshots" not in nodes(q, flat=True)[
        [k for k, v in nodes(q).items() if v["drv"] == "file"][0]]["image"]
