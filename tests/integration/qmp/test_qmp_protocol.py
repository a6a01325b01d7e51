"""QMP wire protocol: greeting, negotiation, ids, error classes, malformed
input (the connection stays usable), several clients, events.  Every check
that both servers share runs against ferry and qemu-storage-daemon."""
import json
import subprocess

import pytest

from qmpclient import Qmp, QmpError, any_daemon, both, daemon, shape  # noqa: F401
from conftest import ferry_path


def test_greeting_has_version_and_capabilities(any_daemon):
    g = any_daemon.qmp.greeting["QMP"]
    assert set(g) == {"version", "capabilities"}
    assert set(g["version"]["qemu"]) == {"major", "minor", "micro"}
    assert isinstance(g["version"]["package"], str)
    assert isinstance(g["capabilities"], list)


def test_commands_refused_before_negotiation(any_daemon):
    c = any_daemon.connect(negotiate=False)
    r = c.execute("query-version")
    assert r["error"]["class"] == "CommandNotFound"
    assert "qmp_capabilities" in r["error"]["desc"]
    c.cmd("qmp_capabilities")
    assert "qemu" in c.cmd("query-version")
    r = c.execute("qmp_capabilities")
    assert r["error"]["class"] == "CommandNotFound"
    c.close()


@pytest.mark.parametrize("req_id", [7, "abc", {"a": [1, 2]}, None])
def test_id_is_echoed(any_daemon, req_id):
    q = any_daemon.qmp
    q.send_raw(json.dumps({"execute": "query-version", "id": req_id}).encode())
    r = q.reply()
    assert r["id"] == req_id
    q.send_raw(json.dumps({"execute": "no-such", "id": req_id}).encode())
    r = q.reply()
    assert r["id"] == req_id and r["error"]["class"] == "CommandNotFound"


ERROR_CASES = [
    # (request, class, desc) as QEMU 7.2 answers
    ({"execute": "no-such-command"}, "CommandNotFound",
     "The command no-such-command has not been found"),
    ({"execute": "block_resize", "arguments": {"node-name": "x"}},
     "GenericError", "Parameter 'size' is missing"),
    ({"execute": "block_resize", "arguments": {"node-name": "x", "size": "1"}},
     "GenericError", "Invalid parameter type for 'size', expected: integer"),
    ({"execute": "block_resize",
      "arguments": {"node-name": "x", "size": 1, "bogus": 1}},
     "GenericError", "Parameter 'bogus' is unexpected"),
    ({"execute": "blockdev-del", "arguments": {"node-name": 5}},
     "GenericError", "Invalid parameter type for 'node-name', expected: string"),
    ({"execute": "blockdev-del", "arguments": {"node-name": "nope"}},
     "GenericError", "Failed to find node with node-name='nope'"),
    ({"execute": "block-dirty-bitmap-add",
      "arguments": {"node": "n", "name": "b", "persistent": "yes"}},
     "GenericError", "Invalid parameter type for 'persistent', expected: boolean"),
    ({"execute": "query-version", "arguments": []},
     "GenericError", "QMP input member 'arguments' must be an object"),
    ({"execute": 3}, "GenericError", "QMP input member 'execute' must be a string"),
    ({"arguments": {}}, "GenericError", "QMP input lacks member 'execute'"),
    ({"execute": "query-version", "extra": 1},
     "GenericError", "QMP input member 'extra' is unexpected"),
    ({"execute": "blockdev-add", "arguments": {"driver": "null-co"}},
     "GenericError", "'node-name' must be specified for the root node"),
]


@pytest.mark.parametrize("req,cls,desc", ERROR_CASES)
def test_errors_have_qemus_class_and_text(any_daemon, req, cls, desc):
    q = any_daemon.qmp
    q.send_raw(json.dumps(req).encode() + b"\n")
    r = q.reply()
    assert r["error"] == {"class": cls, "desc": desc}, r
    assert "qemu" in q.cmd("query-version")   # still usable


@pytest.mark.parametrize("junk", [
    b"this is not json\n",
    b"{\"execute\": \"query-version\",}\n",
    b"}\n",
    b"[1, 2, 3]\n",
    b"42\n",
    b"{\"execute\": \"query-version\", \"execute\": \"quit\"}\n",
])
def test_malformed_input_gets_generic_error(any_daemon, junk):
    q = any_daemon.qmp
    q.send_raw(junk)
    r = q.reply()
    assert r["error"]["class"] == "GenericError"
    assert "id" not in r
    # drain any further errors the junk produced, then check the link
    q.send_raw(b'{"execute": "query-version", "id": "after"}\n')
    while True:
        r = q.reply()
        if r.get("id") == "after":
            break
        assert r["error"]["class"] == "GenericError"
    assert "qemu" in r["return"]


def test_control_character_resets_the_parser(any_daemon):
    q = any_daemon.qmp
    q.send_raw(b'{"execute": "query-ver\x01')
    r = q.reply()
    assert r["error"]["class"] == "GenericError"
    q.send_raw(b'{"execute": "query-version", "id": 1}')
    while True:
        r = q.reply()
        if r.get("id") == 1:
            break
    assert "qemu" in r["return"]


def test_ten_megabyte_line(daemon):
    """A 10 MB command is refused without buffering it whole, and the
    connection goes on; QEMU accepts up to 64 MB, ferry caps one text at 4."""
    q = daemon.qmp
    big = json.dumps({"execute": "query-version",
                      "arguments": {"pad": "A" * (10 << 20)}}).encode()
    q.send_raw(big + b"\n")
    r = q.reply()
    assert r["error"]["class"] == "GenericError"
    assert "exceeds" in r["error"]["desc"]
    q.send_raw(b"B" * (10 << 20) + b"\n")
    r = q.reply()
    assert r["error"]["class"] == "GenericError"
    assert "qemu" in q.cmd("query-version")


def test_two_megabyte_line_same_answer_as_qsd(both):
    """Under ferry's limit, a long command gets the same answer from both
    (qemu-storage-daemon needs 40 s for 10 MB, so the peer check is 2 MB)."""
    answers = []
    for d in both:
        q = d.qmp
        big = json.dumps({"execute": "query-version",
                          "arguments": {"pad": "A" * (2 << 20)}}).encode()
        q.send_raw(big + b"\n")
        answers.append(q.reply()["error"])
        assert "qemu" in q.cmd("query-version")
    assert answers[0] == answers[1] == {
        "class": "GenericError", "desc": "Parameter 'pad' is unexpected"}


def test_query_commands_lists_what_ferry_serves(daemon):
    names = {c["name"] for c in daemon.qmp.cmd("query-commands")}
    for n in ["qmp_capabilities", "query-version", "query-commands",
              "blockdev-add", "blockdev-del", "query-named-block-nodes",
              "block_resize", "block-dirty-bitmap-add",
              "block-dirty-bitmap-merge"]:
        assert n in names
    for n in names - {"qmp_capabilities"}:   # each one dispatches
        r = daemon.qmp.execute(n, {"__probe__": 1})
        if "error" in r:
            assert r["error"]["class"] != "CommandNotFound", n


def test_answers_have_qsd_shape(both):
    f, q = both
    for cmd in ["query-version", "query-block", "query-named-block-nodes"]:
        a, b = f.qmp.cmd(cmd), q.qmp.cmd(cmd)
        assert shape(a) == shape(b), cmd
    assert shape(f.qmp.greeting["QMP"]["version"]) == \
        shape(q.qmp.greeting["QMP"]["version"])


def test_several_clients_each_get_replies_and_events(daemon):
    clients = [daemon.connect() for _ in range(4)]
    for i, c in enumerate(clients):
        r = c.execute("query-version", id=i)
        assert r["id"] == i
    clients[0].cmd("blockdev-add", driver="null-co", node_name="n0",
                   size=1 << 20)
    clients[1].cmd("block-dirty-bitmap-add", node="n0", name="b")
    nodes = clients[2].cmd("query-named-block-nodes")
    assert [n["node-name"] for n in nodes] == ["n0"]
    assert nodes[0]["dirty-bitmaps"][0]["name"] == "b"
    unneg = daemon.connect(negotiate=False)
    # a job's events reach every client that negotiated, and no other
    clients[0].cmd("blockdev-add", driver="null-co", node_name="t0",
                   size=1 << 20)
    clients[0].cmd("blockdev-backup", device="n0", target="t0", sync="full",
                   job_id="j")
    for c in clients:
        c.get_event("BLOCK_JOB_COMPLETED", match={"device": "j"})
    unneg.sock.settimeout(0.5)
    with pytest.raises(Exception):
        unneg.recv()
    for c in clients:
        c.close()


def test_events_have_timestamps(daemon):
    q = daemon.qmp
    q.cmd("blockdev-add", driver="null-co", node_name="a", size=1 << 20)
    q.cmd("blockdev-add", driver="null-co", node_name="b", size=1 << 20)
    q.cmd("blockdev-backup", device="a", target="b", sync="full", job_id="j")
    ev = q.get_event("JOB_STATUS_CHANGE")
    ts = ev["timestamp"]
    assert set(ts) == {"seconds", "microseconds"}
    assert ts["seconds"] > 1600000000 and 0 <= ts["microseconds"] < 1000000


def test_ferry_qmp_tool(daemon, tmp_path):
    exe = ferry_path()
    r = subprocess.run([exe, "qmp", daemon.sock, "query-version"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "qemu" in json.loads(r.stdout)["return"]
    r = subprocess.run([exe, "qmp", daemon.sock, "blockdev-del",
                        '{"node-name": "x"}'], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert json.loads(r.stdout)["error"]["class"] == "GenericError"
    shell = 'blockdev-add {"driver": "null-co", "node-name": "s0", "size": 4096}\n' \
            '{"execute": "query-named-block-nodes", "id": 5}\n'
    r = subprocess.run([exe, "qmp", daemon.sock, "--shell"], input=shell,
                       capture_output=True, text=True, timeout=30)
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[0] == {"return": {}}
    assert lines[1]["id"] == 5 and lines[1]["return"][0]["node-name"] == "s0"
    ev = subprocess.Popen([exe, "qmp", daemon.sock, "--events", "--count",
                           "2", "--timeout", "20"], stdout=subprocess.PIPE,
                          text=True)
    import time
    time.sleep(0.3)
    daemon.qmp.cmd("blockdev-add", driver="null-co", node_name="t", size=4096)
    daemon.qmp.cmd("blockdev-backup", device="s0", target="t", sync="none",
                   job_id="jb")
    out, _ = ev.communicate(timeout=30)
    evs = [json.loads(x) for x in out.splitlines()]
    assert [e["data"]["status"] for e in evs] == ["created", "running"]
    daemon.qmp.cmd("job-cancel", id="jb")


def test_tcp_listener_and_two_addresses(tmp_path):
    """--serve takes several addresses; TCP speaks the same protocol."""
    import socket as so
    import time
    s = so.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    path = str(tmp_path / "u.sock")
    proc = subprocess.Popen([ferry_path(), "qmp", "--serve",
                             "tcp:127.0.0.1:%d,server" % port, "--serve",
                             "unix:%s,server,wait=off" % path])
    try:
        deadline = time.time() + 10
        while True:
            try:
                c = so.create_connection(("127.0.0.1", port), timeout=10)
                break
            except ConnectionRefusedError:
                assert time.time() < deadline
                time.sleep(0.05)
        f = c.makefile("rwb")
        assert "QMP" in json.loads(f.readline())
        f.write(b'{"execute":"qmp_capabilities"}{"execute":"query-version",'
                b'"id":"t"}')
        f.flush()
        assert json.loads(f.readline()) == {"return": {}}
        r = json.loads(f.readline())
        assert r["id"] == "t" and r["return"]["qemu"]["major"] == 7
        r = subprocess.run([ferry_path(), "qmp", "tcp:127.0.0.1:%d" % port,
                            "query-commands"], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0
        r = subprocess.run([ferry_path(), "qmp", "unix:" + path, "quit"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_listen_address_is_one_line_error(tmp_path):
    r = subprocess.run([ferry_path(), "qmp", "--serve", "udp:1.2.3.4:5"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "unix:PATH or tcp:HOST:PORT" in r.stderr


def test_qmp_schema_describes_commands_and_events(both):
    """Tools probe query-qmp-schema for members: every command ferry serves
    is there with its members, and entries have QEMU's shape."""
    f, q = both
    schema = f.qmp.cmd("query-qmp-schema")
    by_name = {e["name"]: e for e in schema}
    names = {c["name"] for c in f.qmp.cmd("query-commands")}
    for n in names:
        e = by_name[n]
        assert e["meta-type"] == "command"
        assert by_name[e["arg-type"]]["meta-type"] == "object"
    stream_args = {m["name"]: m for m in
                   by_name[by_name["block-stream"]["arg-type"]]["members"]}
    assert stream_args["device"]["type"] == "str"
    assert "default" not in stream_args["device"]
    assert stream_args["speed"] == {"name": "speed", "type": "int",
                                    "default": None}
    assert by_name["JOB_STATUS_CHANGE"]["meta-type"] == "event"
    qsd = {e["name"]: e for e in q.qmp.cmd("query-qmp-schema")}
    for meta in ("command", "object", "event", "builtin"):
        ours = [e for e in schema if e["meta-type"] == meta][0]
        theirs = [e for e in qsd.values() if e["meta-type"] == meta and
                  set(e) == set(ours)]
        assert theirs, meta
    for n in ("block-stream", "blockdev-mirror", "JOB_STATUS_CHANGE"):
        assert n in qsd
