"""nexo as an MCP server, against the fake LLM (tests/fakes/fake_llm.py) as the agent's provider.

- stdio: `nexo mcp-server --agent main`: initialize, tools/list, a call that gets the fake's
  answer with progress notifications, a call cancelled midway (no response, the process goes
  on), logging/setLevel and notifications/message, ping, bad frames (parse error, invalid
  request, over the frame cap) answered while the process stays up, exit 0 at end of input;
  the agent's own tool calls as progress, and the turn's log lines as notifications/message
  (a key in a log line reaches the client redacted).
- Streamable HTTP at /mcp on a running gateway: sessions (400/404), protocol version header,
  Origin/Host checks (403), bearer auth (401), JSON and SSE answers (priming event, retry),
  resumption with Last-Event-ID, the GET stream, DELETE, metrics; two sessions at level debug
  calling one agent at once each get their own call's log lines, never the other's.
- @modelcontextprotocol/inspector-cli over stdio and HTTP: tools/list, tools/call,
  logging/setLevel.
- @modelcontextprotocol/conformance server scenarios against /mcp, in a network namespace with
  only loopback (unshare -n; the conformance tool is run inside it with nsenter). Every scenario
  not listed in mcp_server_conformance_expected.yaml (those call the suite's fixture tools,
  prompts and resources by name) must pass; the pass counts are printed.
"""
import glob
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from nexo_harness import NEXO_BIN, Nexo, main, write_config
from peers import (PEERS, SRC, fake_requests, release, script, start_fake, start_nexo, stop_all, stop_fake,
                   wait_for)

CONFORMANCE = os.path.join(PEERS, "node_modules", ".bin", "conformance")
INSPECTOR = os.path.join(PEERS, "node_modules", "@modelcontextprotocol", "inspector-cli", "build")
EXPECTED = os.path.join(SRC, "tests", "integration", "mcp_server_conformance_expected.yaml")
TOKEN = "mcp-server-test-token"
SANITIZER = r"ERROR: (Address|Leak)Sanitizer|runtime error:|WARNING: ThreadSanitizer"
ENV = {"ANTHROPIC_API_KEY": "", "OPENAI_API_KEY": "", "ANTHROPIC_BASE_URL": "", "OPENAI_BASE_URL": ""}


def config(root, port, extra=None):
    files = {
        "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n" % port,
        "agents.yaml": "agents:\n  - {id: main, description: test agent, model: {provider: anthropic, model: m},\n"
                       "     allowed_tools: [time_now]}\n",
        "mcp_server.yaml": "enabled: true\nmax_frame: 2KiB\nexpose_tools: [time_now]\n"
                           "http: {session_idle_timeout: 10m, sse_retry: 500ms, max_sessions: 3}\n",
    }
    files.update(extra or {})
    return write_config(os.path.join(root, "config"), files)


def env():
    e = dict(os.environ)
    e.update(ENV)
    return e


class StdioClient:
    """Newline-delimited JSON-RPC with a child process; every read has a deadline."""

    def __init__(self, cmd):
        # stderr to a file: a pipe nobody reads could fill up and stall the server.
        self.err = tempfile.TemporaryFile()
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                  env=env())
        self.buf = b""
        self.seen = []

    def send(self, obj):
        data = obj if isinstance(obj, (bytes, str)) else json.dumps(obj)
        if isinstance(data, str):
            data = data.encode()
        self.p.stdin.write(data + b"\n")
        self.p.stdin.flush()

    def read(self, timeout=20):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no message in %ss; stderr: %s" % (timeout, self.stderr_tail()))
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if r:
                chunk = os.read(self.p.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError("stdout closed; stderr: %s" % self.stderr_tail())
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        msg = json.loads(line)
        self.seen.append(msg)
        return msg

    def until(self, pred, timeout=30):
        """Reads until pred(msg); returns (msg, the messages before it)."""
        before = []
        deadline = time.monotonic() + timeout
        while True:
            m = self.read(max(0.1, deadline - time.monotonic()))
            if pred(m):
                return m, before
            before.append(m)

    def call(self, id_, method, params=None):
        msg = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return self.until(lambda m: m.get("id") == id_)

    def stderr(self):
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def stderr_tail(self):
        return self.stderr()[-3000:]

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        for f in (self.p.stdin, self.p.stdout, self.err):
            try:
                f.close()
            except OSError:
                pass


INIT = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


class McpServerStdio(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fake, cls.port = start_fake()
        cls.tmp = tempfile.mkdtemp(prefix="nexo-mcps-")
        cls.cfg = config(cls.tmp, cls.port)

    @classmethod
    def tearDownClass(cls):
        stop_fake(cls.fake)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def client(self):
        c = StdioClient([NEXO_BIN, "mcp-server", "--agent", "main", "--config", self.cfg,
                         "--data", os.path.join(self.tmp, "data"), "--log-level", "info"])
        self.addCleanup(c.close)
        return c

    def test_exported_file_tools_keep_the_agents_lockout(self):
        # an agent whose workspace holds the configuration has no file tools in nexo, and none
        # through the MCP server either (llm.yaml's key was one file_read away)
        root = tempfile.mkdtemp(prefix="nexo-mcps-ws-")
        self.addCleanup(shutil.rmtree, root, True)
        cfg = config(root, self.port, {
            "agents.yaml": "agents:\n  - {id: main, description: d, model: {provider: anthropic, model: m},\n"
                           "     workspace: ., allowed_tools: [file_read]}\n",
            "mcp_server.yaml": "enabled: true\nexpose_tools: [file_read]\n"})
        c = StdioClient([NEXO_BIN, "mcp-server", "--agent", "main", "--config", cfg,
                         "--data", os.path.join(root, "data"), "--log-level", "info"])
        self.addCleanup(c.close)
        c.call(1, "initialize", INIT)
        c.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        r, _ = c.call(2, "tools/call", {"name": "file_read", "arguments": {"path": "llm.yaml"}})
        text = json.dumps(r)
        self.assertTrue(r["result"]["isError"], text)
        self.assertNotIn("sk-fake-key", text)
        self.assertIn("file tools are disabled", text)

    def test_lifecycle_tools_progress_cancel_logging(self):
        c = self.client()
        r, _ = c.call(1, "initialize", INIT)
        self.assertEqual(r["result"]["protocolVersion"], "2025-06-18")
        self.assertIn("tools", r["result"]["capabilities"])
        c.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        r, _ = c.call(2, "tools/list")
        names = [t["name"] for t in r["result"]["tools"]]
        self.assertEqual(names, ["ask_main", "time_now"])

        script(self.port, [{"text": "hello from the fake agent", "chunks": 4}])
        r, before = c.call(3, "tools/call", {"name": "ask_main", "arguments": {"message": "hi"},
                                             "_meta": {"progressToken": "tok"}})
        self.assertFalse(r["result"]["isError"], r)
        self.assertEqual(r["result"]["content"][0]["text"], "hello from the fake agent")
        prog = [m["params"] for m in before if m.get("method") == "notifications/progress"]
        self.assertGreaterEqual(len(prog), 2, before)
        self.assertTrue(all(p["progressToken"] == "tok" for p in prog))
        values = [p["progress"] for p in prog]
        self.assertEqual(values, sorted(set(values)))
        self.assertGreater(values[-1], 0)

        r, _ = c.call(4, "tools/call", {"name": "time_now", "arguments": {}})
        self.assertIn("utc", json.loads(r["result"]["content"][0]["text"]))

        # Cancel midway: the turn streams slowly; no response follows the cancellation.
        script(self.port, [{"text": "a b c d e f g h i j k l m n o p q r s t", "chunks": 20, "delay_ms": 300}])
        c.send({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                "params": {"name": "ask_main", "arguments": {"message": "long"}, "_meta": {"progressToken": 5}}})
        c.until(lambda m: m.get("method") == "notifications/progress" and m["params"]["progress"] > 0)
        c.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5, "reason": "t"}})
        r, between = c.call(6, "ping")
        self.assertEqual(r["result"], {})
        self.assertFalse([m for m in between if m.get("id") == 5], between)

        # logging/setLevel: the next call reports at info level and above.
        r, _ = c.call(7, "logging/setLevel", {"level": "info"})
        self.assertEqual(r["result"], {})
        r, before = c.call(8, "tools/call", {"name": "ask_main", "arguments": {"message": "again"}})
        logs = [m["params"] for m in before if m.get("method") == "notifications/message"]
        self.assertTrue(logs, before)
        self.assertTrue(all(lg["level"] in ("info", "notice", "warning", "error") for lg in logs), logs)
        self.assertTrue(any("ask_main" in lg["data"] for lg in logs), logs)
        self.assertFalse([m for m in c.seen if m.get("id") == 5])

        # Bad frames get answers and the process stays up.
        c.send("this is not json")
        r = c.read()
        self.assertEqual(r["error"]["code"], -32700)
        self.assertIsNone(r["id"])
        c.send({"id": 9, "method": "ping"})
        r = c.read()
        self.assertEqual((r["id"], r["error"]["code"]), (9, -32600))
        c.send({"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {"name": "ask_main",
                                                                              "arguments": {"message": "x" * 4000}}})
        r = c.read()
        self.assertEqual(r["error"]["code"], -32600)
        self.assertIn("too large", r["error"]["message"])
        c.send([{"jsonrpc": "2.0", "id": 11, "method": "ping"}])
        r = c.read()
        self.assertEqual(r["error"]["code"], -32600)
        r, _ = c.call(12, "no/such/method")
        self.assertEqual(r["error"]["code"], -32601)
        r, _ = c.call(13, "tools/call", {"name": "ask_nobody", "arguments": {"message": "x"}})
        self.assertEqual(r["error"]["code"], -32602)
        r, _ = c.call(14, "ping")
        self.assertEqual(r["result"], {})

        # End of input: the call in flight is answered, then exit 0.
        script(self.port, [{"text": "last words", "chunks": 2, "delay_ms": 100}])
        c.send({"jsonrpc": "2.0", "id": 15, "method": "tools/call",
                "params": {"name": "ask_main", "arguments": {"message": "bye"}}})
        c.p.stdin.close()
        r, _ = c.until(lambda m: m.get("id") == 15)
        self.assertEqual(r["result"]["content"][0]["text"], "last words")
        self.assertEqual(c.p.wait(timeout=30), 0)
        err = c.stderr()
        self.assertIn("serving MCP on stdio", err)
        self.assertNotRegex(err, SANITIZER)
        self.assertNotIn("sk-fake-key", err)

    def test_turn_log_lines_and_tool_progress(self):
        """The agent's tool calls show in progress; the turn's log lines reach a client that set a
        level, redacted: a key in a log line never reaches it."""
        secret = "sk-ant-api03-" + "Zq7" * 12
        c = self.client()
        c.call(1, "initialize", INIT)
        c.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        r, _ = c.call(2, "logging/setLevel", {"level": "warning"})
        self.assertEqual(r["result"], {})
        # The model calls time_now and a tool named like a key: the registry refuses the latter
        # with a warning that names it.
        script(self.port, [{"tool_use": [{"name": "time_now", "input": {}}, {"name": secret, "input": {}}]},
                           {"text": "done with tools"}])
        r, before = c.call(3, "tools/call", {"name": "ask_main", "arguments": {"message": "use tools"},
                                             "_meta": {"progressToken": "t"}})
        self.assertEqual(r["result"]["content"][0]["text"], "done with tools", r)
        prog = [m["params"] for m in before if m.get("method") == "notifications/progress"]
        msgs = [p.get("message", "") for p in prog]
        self.assertIn("calling tool time_now", msgs)
        self.assertIn("finished tool time_now", msgs)
        self.assertTrue(any(m.startswith("finished tool") and "failed" in m for m in msgs), msgs)
        values = [p["progress"] for p in prog]
        self.assertEqual(values, sorted(set(values)))
        logs = [m["params"] for m in before if m.get("method") == "notifications/message"]
        refused = [lg for lg in logs if lg["logger"] == "tools"]
        self.assertEqual(len(refused), 1, logs)
        self.assertEqual(refused[0]["level"], "warning")
        self.assertIn("unknown tool", refused[0]["data"])
        self.assertIn("[REDACTED]", refused[0]["data"])
        self.assertTrue(all(lg["level"] in ("warning", "error") for lg in logs), logs)
        r, _ = c.call(4, "ping")
        self.assertNotIn(secret, json.dumps(c.seen))
        self.assertNotIn(secret[:24], json.dumps(c.seen))
        c.p.stdin.close()
        self.assertEqual(c.p.wait(timeout=30), 0)
        err = c.stderr()
        self.assertNotIn(secret, err)
        self.assertNotRegex(err, SANITIZER)

    def test_unknown_agent_is_a_usage_error(self):
        r = subprocess.run([NEXO_BIN, "mcp-server", "--agent", "ghost", "--config", self.cfg,
                            "--data", os.path.join(self.tmp, "data")], input="", capture_output=True,
                           text=True, timeout=30, env=env())
        self.assertEqual(r.returncode, 2)
        self.assertIn('no agent "ghost"', r.stderr)
        self.assertEqual(r.stdout, "")


def sse_events(raw):
    """Parses an SSE body into [{id, data, retry}]."""
    out = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        ev = {}
        for line in block.split("\n"):
            if line.startswith(":") or ":" not in line:
                continue
            k, v = line.split(":", 1)
            v = v[1:] if v.startswith(" ") else v
            if k == "data":
                ev["data"] = ev.get("data", "") + v
            else:
                ev[k] = v
        if ev:
            out.append(ev)
    return out


def log_data(body):
    """The data of the notifications/message in an SSE answer."""
    msgs = [json.loads(e["data"]) for e in sse_events(body.decode()) if e.get("data")]
    return [m["params"]["data"] for m in msgs if m.get("method") == "notifications/message"]


class McpServerHttp(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fake, cls.port = start_fake()
        cls.tmp = tempfile.mkdtemp(prefix="nexo-mcph-")
        mcp = ("enabled: true\nmax_frame: 2KiB\nexpose_tools: [time_now]\n"
               "http: {session_idle_timeout: 10m, sse_retry: 500ms, max_sessions: 3,\n"
               "       allowed_origins: [\"https://mcp.example\"]}\n")
        cls.cfg = config(cls.tmp, cls.port, {
            "gateway.yaml": "auth_token: %s\ncors: {allowed_origins: [\"https://gw.example\"]}\n" % TOKEN,
            "mcp_server.yaml": mcp})
        cls.n = start_nexo(Nexo(config_dir=cls.cfg, env=ENV), cls.fake)

    @classmethod
    def tearDownClass(cls):
        stop_all(cls.n, cls.fake, cls.tmp)

    def post(self, body, sid=None, headers=None, accept="application/json, text/event-stream"):
        h = {"Content-Type": "application/json", "Accept": accept, "Authorization": "Bearer " + TOKEN}
        if sid:
            h["Mcp-Session-Id"] = sid
            h["MCP-Protocol-Version"] = "2025-11-25"
        h.update(headers or {})
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.n.request("POST", "/mcp", body=data, headers=h, timeout=30)

    def session(self):
        st, body, hdrs = self.post({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                    "params": dict(INIT, protocolVersion="2025-11-25")})
        self.assertEqual(st, 200, body)
        self.assertTrue(hdrs["content-type"].startswith("application/json"))
        self.assertEqual(json.loads(body)["result"]["protocolVersion"], "2025-11-25")
        sid = hdrs["mcp-session-id"]
        self.assertRegex(sid, r"^[0-9a-f]{32}$")
        st, body, _ = self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
        self.assertEqual((st, body), (202, b""))
        return sid

    def test_session_cap_ends_the_idlest(self):
        sids = [self.session() for _ in range(4)]
        alive = []
        for sid in sids:
            st, _, _ = self.post({"jsonrpc": "2.0", "id": 9, "method": "ping"}, sid)
            self.assertIn(st, (200, 404))
            alive.append(st == 200)
        self.assertFalse(alive[0])
        self.assertTrue(alive[-1])
        self.assertLessEqual(sum(alive), 3)
        for sid, ok in zip(sids, alive):
            if ok:
                self.n.request("DELETE", "/mcp", headers={"Mcp-Session-Id": sid, "Authorization": "Bearer " + TOKEN})

    def test_sessions_headers_and_security(self):
        sid = self.session()
        st, body, _ = self.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid)
        self.assertEqual(st, 200)
        self.assertEqual([t["name"] for t in json.loads(body)["result"]["tools"]], ["ask_main", "time_now"])
        st, _, _ = self.post({"jsonrpc": "2.0", "id": 3, "method": "ping"})
        self.assertEqual(st, 400)
        st, _, _ = self.post({"jsonrpc": "2.0", "id": 3, "method": "ping"}, "0" * 32)
        self.assertEqual(st, 404)
        st, _, _ = self.post({"jsonrpc": "2.0", "id": 3, "method": "ping"}, sid,
                             headers={"MCP-Protocol-Version": "1999-01-01"})
        self.assertEqual(st, 400)
        st, body, _ = self.post(b"{oops", sid)
        self.assertEqual(st, 400)
        self.assertEqual(json.loads(body)["error"]["code"], -32700)
        st, _, _ = self.post({"jsonrpc": "2.0", "id": 3, "method": "ping"}, sid, accept="text/html")
        self.assertEqual(st, 406)
        st, _, _ = self.post({"jsonrpc": "2.0", "id": 3, "method": "ping"}, sid,
                             headers={"Origin": "http://evil.example.com"})
        self.assertEqual(st, 403)
        st, _, _ = self.post({"jsonrpc": "2.0", "id": 3, "method": "ping"}, sid,
                             headers={"Host": "evil.example.com"})
        self.assertEqual(st, 403)
        # the listener's own loopback names, no more: *.localhost and 127/8 reach only this machine
        for host, want in (("localhost.evil.example", 403), ("127.0.0.1.nip.io", 403), ("app.localhost:9", 200),
                           ("127.1.2.3", 200), ("[::1]:9", 200)):
            st, _, _ = self.post({"jsonrpc": "2.0", "id": 3, "method": "ping"}, sid, headers={"Host": host})
            self.assertEqual(st, want, host)
        st, body, _ = self.post({"jsonrpc": "2.0", "id": 3, "method": "ping"}, sid,
                                headers={"Origin": "http://localhost:1234", "Host": "127.0.0.1:9"})
        self.assertEqual((st, json.loads(body)["result"]), (200, {}))
        # a page listed in either list (MCP's own, the gateway's) may call, and read the session id
        for origin in ("https://mcp.example", "https://gw.example"):
            st, body, hdrs = self.post({"jsonrpc": "2.0", "id": 3, "method": "ping"}, sid,
                                       headers={"Origin": origin})
            self.assertEqual((st, json.loads(body)["result"]), (200, {}), origin)
            self.assertEqual(hdrs["access-control-allow-origin"], origin)
            self.assertIn("mcp-session-id", hdrs["access-control-expose-headers"])
        st, _, hdrs = self.post({"jsonrpc": "2.0", "id": 3, "method": "ping"}, sid,
                                headers={"Authorization": "Bearer wrong"})
        self.assertEqual(st, 401)
        self.assertIn("bearer", hdrs.get("www-authenticate", "").lower())
        st, _, _ = self.post({"jsonrpc": "2.0", "id": 4, "method": "ping"}, sid, accept="application/json")
        self.assertEqual(st, 200)
        st, body, _ = self.post({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                                 "params": {"name": "time_now", "arguments": {}}}, sid)
        self.assertEqual(st, 200)
        self.assertFalse(json.loads(body)["result"]["isError"])
        st, body, _ = self.post({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                                 "params": {"name": "x"}}, sid)
        self.assertEqual(json.loads(body)["error"]["code"], -32602)
        st, body, _ = self.post(b"x" * 3000, sid)
        self.assertEqual(st, 413)
        st, _, _ = self.n.request("DELETE", "/mcp", headers={"Mcp-Session-Id": sid,
                                                            "Authorization": "Bearer " + TOKEN})
        self.assertEqual(st, 200)
        st, _, _ = self.post({"jsonrpc": "2.0", "id": 7, "method": "ping"}, sid)
        self.assertEqual(st, 404)

    def test_agent_call_streams_sse_and_resumes(self):
        sid = self.session()
        script(self.port, [{"text": "streamed answer", "chunks": 3}])
        st, body, hdrs = self.post({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                    "params": {"name": "ask_main", "arguments": {"message": "hi"},
                                               "_meta": {"progressToken": 1}}}, sid)
        self.assertEqual(st, 200)
        self.assertTrue(hdrs["content-type"].startswith("text/event-stream"), hdrs)
        evs = sse_events(body.decode())
        self.assertEqual(evs[0].get("data", ""), "")        # priming event
        self.assertEqual(evs[0]["retry"], "500")
        self.assertRegex(evs[0]["id"], r"^\d+-0$")
        msgs = [json.loads(e["data"]) for e in evs if e.get("data")]
        self.assertEqual(msgs[-1]["result"]["content"][0]["text"], "streamed answer")
        self.assertTrue(any(m.get("method") == "notifications/progress" for m in msgs))
        ids = [e["id"] for e in evs]
        self.assertEqual(len(ids), len(set(ids)))

        # Leave a slow call after the priming event, then resume with Last-Event-ID.
        script(self.port, [{"text": "x y z w", "chunks": 4, "delay_ms": 250}])
        s = self.n.connect(timeout=20)
        body = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                           "params": {"name": "ask_main", "arguments": {"message": "slow"},
                                      "_meta": {"progressToken": "p3"}}})
        s.sendall(("POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   "Accept: application/json, text/event-stream\r\nAuthorization: Bearer %s\r\n"
                   "Mcp-Session-Id: %s\r\nContent-Length: %d\r\n\r\n%s" % (TOKEN, sid, len(body), body)).encode())
        got = b""
        deadline = time.monotonic() + 20
        while b"data: \n\n" not in got and time.monotonic() < deadline:
            got += s.recv(4096)
        s.close()
        leid = re.search(rb"id: (\d+-0)", got).group(1).decode()
        st, body, hdrs = self.n.request("GET", "/mcp", headers={
            "Accept": "text/event-stream", "Mcp-Session-Id": sid, "Last-Event-ID": leid,
            "Authorization": "Bearer " + TOKEN}, timeout=30)
        self.assertEqual(st, 200)
        msgs = [json.loads(e["data"]) for e in sse_events(body.decode()) if e.get("data")]
        self.assertEqual(msgs[-1]["id"], 3)
        self.assertEqual(msgs[-1]["result"]["content"][0]["text"], "x y z w")

        # The GET stream for server messages opens (and is ended by the DELETE).
        g = self.n.connect(timeout=20)
        g.sendall(("GET /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n"
                   "Authorization: Bearer %s\r\nMcp-Session-Id: %s\r\n\r\n" % (TOKEN, sid)).encode())
        head = b""
        while b"retry:" not in head and time.monotonic() < deadline + 10:
            head += g.recv(4096)
        self.assertIn(b"200", head.split(b"\r\n")[0])
        self.assertIn(b"text/event-stream", head)
        st, _, _ = self.n.request("DELETE", "/mcp", headers={"Mcp-Session-Id": sid,
                                                            "Authorization": "Bearer " + TOKEN})
        self.assertEqual(st, 200)
        g.settimeout(20)
        rest = b""
        while True:
            b = g.recv(4096)
            if not b:
                break
            rest += b
            if rest.endswith(b"0\r\n\r\n"):
                break
        g.close()

        st, body, _ = self.n.request("GET", "/metrics", listener="metrics",
                                     headers={"Authorization": "Bearer " + TOKEN})
        text = body.decode()
        self.assertRegex(text, r'nexo_mcp_server_calls_total\{tool="ask_main",outcome="ok"\} [1-9]')
        self.assertIn('nexo_mcp_server_call_seconds_bucket{tool="ask_main"', text)

    def two_sessions_at_once(self):
        """Sessions alpha and beta, both at level debug, ask the agent at once: alpha's turn calls
        the unknown tool ghost_alpha after a pause, beta's turn calls ghost_beta and ends while
        alpha's runs (the tools registry logs a warning naming each). Returns each session's
        forwarded log lines."""
        sids = {name: self.session() for name in ("alpha", "beta")}
        for sid in sids.values():
            st, _, _ = self.post({"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel",
                                  "params": {"level": "debug"}}, sid)
            self.assertEqual(st, 200)
        script(self.port, [{"tool_use": {"name": "ghost_alpha", "input": {}}, "hold": sids["alpha"]},
                           {"tool_use": {"name": "ghost_beta", "input": {}}}, {"text": "beta done"},
                           {"text": "alpha done"}])
        out = {}

        def call(name):
            st, body, _ = self.post({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                                     "params": {"name": "ask_main",
                                                "arguments": {"message": "hi", "session": name}}},
                                    sids[name])
            out[name] = (st, body)

        seen = len(fake_requests(self.port))
        alpha = threading.Thread(target=call, args=("alpha",))
        alpha.start()
        wait_for(lambda: len(fake_requests(self.port)) > seen, 20, "alpha's request at the fake LLM")
        call("beta")
        release(self.port, sids["alpha"])  # alpha's first call was held at the fake until beta was done
        alpha.join(30)
        logs = {}
        for name in sids:
            st, body = out[name]
            self.assertEqual(st, 200, body)
            msgs = [json.loads(e["data"]) for e in sse_events(body.decode()) if e.get("data")]
            self.assertEqual(msgs[-1]["result"]["content"][0]["text"], name + " done", msgs)
            logs[name] = log_data(body)
            self.n.request("DELETE", "/mcp", headers={"Mcp-Session-Id": sids[name],
                                                      "Authorization": "Bearer " + TOKEN})
        return logs

    def test_sessions_get_only_their_own_calls_lines(self):
        logs = self.two_sessions_at_once()
        for me, other in (("alpha", "beta"), ("beta", "alpha")):
            mine = "\n".join(logs[me])
            self.assertIn("agent:main:mcp:" + me, mine)
            self.assertNotIn("mcp:" + other, mine)
            self.assertNotIn("ghost_" + other, mine)

    def test_lines_from_the_model_clients_callbacks_reach_their_call(self):
        """A 429 and the retry after it are logged from the HTTP client's and the backoff timer's
        callbacks, not from the turn's own code: with two sessions open, the lines still reach
        the session whose call it was (the log context follows the request), and no other."""
        sids = {name: self.session() for name in ("alpha", "beta")}
        for sid in sids.values():
            st, _, _ = self.post({"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel",
                                  "params": {"level": "debug"}}, sid)
            self.assertEqual(st, 200)
        script(self.port, [{"error": {"status": 429, "type": "rate_limit_error", "message": "slow down",
                                      "retry_after_ms": 50}},
                           {"text": "alpha done"}])
        st, body, _ = self.post({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                                 "params": {"name": "ask_main", "arguments": {"message": "hi", "session": "alpha"}}},
                                sids["alpha"])
        self.assertEqual(st, 200, body)
        logs = "\n".join(log_data(body))
        self.assertIn("alpha done", body.decode())
        self.assertRegex(logs, r"attempt 1 failed \(rate_limit_error\), retrying in \d+ ms", logs)
        st, body, _ = self.post({"jsonrpc": "2.0", "id": 4, "method": "ping"}, sids["beta"])
        self.assertEqual(st, 200)
        self.assertNotIn("retrying", body.decode())
        for sid in sids.values():
            self.n.request("DELETE", "/mcp", headers={"Mcp-Session-Id": sid, "Authorization": "Bearer " + TOKEN})

    def test_sessions_get_their_own_turns_lines(self):
        logs = self.two_sessions_at_once()
        for me in ("alpha", "beta"):
            self.assertTrue(any("ghost_" + me in d for d in logs[me]), logs[me])


def node_env():
    e = dict(os.environ)
    e.update(ENV)
    return e


class McpServerInspector(unittest.TestCase):
    """inspector-cli (its CWD bug: run it from its build/ dir)."""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(os.path.join(INSPECTOR, "index.js")):
            raise AssertionError("%s missing: run scripts/install-npm-peers.sh" % INSPECTOR)
        cls.fake, cls.port = start_fake()
        cls.tmp = tempfile.mkdtemp(prefix="nexo-mcpi-")
        cls.cfg = config(cls.tmp, cls.port)

    @classmethod
    def tearDownClass(cls):
        stop_fake(cls.fake)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def inspect(self, target, *args):
        r = subprocess.run(["node", "index.js", *target, *args], cwd=INSPECTOR, capture_output=True, text=True,
                           timeout=90, env=node_env())
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return json.loads(r.stdout)

    def check(self, target):
        out = self.inspect(target, "--method", "tools/list")
        self.assertIn("ask_main", [t["name"] for t in out["tools"]])
        script(self.port, [{"text": "inspected"}])
        out = self.inspect(target, "--method", "tools/call", "--tool-name", "ask_main", "--tool-arg", "message=hi")
        self.assertEqual(out["content"][0]["text"], "inspected")
        out = self.inspect(target, "--method", "logging/setLevel", "--log-level", "debug")
        self.assertEqual(out, {})

    def test_stdio(self):
        self.check([NEXO_BIN, "mcp-server", "--agent", "main", "--config", self.cfg,
                    "--data", os.path.join(self.tmp, "data"), "--log-level", "warn"])

    def test_http(self):
        n = Nexo(config_dir=self.cfg, env=ENV)
        try:
            n.start()
            self.check(["http://127.0.0.1:%d/mcp" % n.ports["gateway"]])
            self.assertEqual(n.stop(), 0)
        finally:
            n.cleanup()


def expected_failures():
    names = []
    with open(EXPECTED) as f:
        for line in f:
            m = re.match(r"^\s+-\s+([\w/.-]+)", line)
            if m:
                names.append(m.group(1))
    return names


class McpServerConformance(unittest.TestCase):
    def test_server_scenarios(self):
        if not os.path.exists(CONFORMANCE):
            raise AssertionError("%s missing: run scripts/install-npm-peers.sh" % CONFORMANCE)
        tmp = tempfile.mkdtemp(prefix="nexo-mcpc-")
        self.addCleanup(shutil.rmtree, tmp, True)
        cfg = write_config(os.path.join(tmp, "config"), {"mcp_server.yaml": "enabled: true\n"})
        sock_path = os.path.join(tmp, "notify.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(sock_path)
        self.addCleanup(notify.close)
        log = open(os.path.join(tmp, "nexo.log"), "wb")
        self.addCleanup(log.close)
        e = env()
        e["NOTIFY_SOCKET"] = sock_path
        inner = ("ip link set lo up && exec %s run --config %s --data %s --listen 127.0.0.1:0 "
                 "--metrics-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0"
                 % (NEXO_BIN, cfg, os.path.join(tmp, "data")))
        p = subprocess.Popen(["unshare", "-n", "sh", "-c", inner], stdout=log, stderr=subprocess.STDOUT, env=e,
                             cwd=tmp)

        def stop():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.addCleanup(stop)

        def check_log():
            stop()
            with open(os.path.join(tmp, "nexo.log"), "rb") as f:
                log = f.read().decode(errors="replace")
            self.assertNotRegex(log, SANITIZER)
            self.assertEqual(p.returncode, 0, log[-3000:])
        deadline = time.monotonic() + 30
        while True:
            self.assertIsNone(p.poll(), "nexo exited early")
            self.assertLess(time.monotonic(), deadline, "nexo not ready")
            r, _, _ = select.select([notify], [], [], 0.2)
            if r and b"READY=1" in notify.recv(4096):
                break
        with open(os.path.join(tmp, "nexo.log"), "rb") as f:
            port = int(re.search(rb"gateway http://[^:]+:(\d+)", f.read()).group(1))
        out = os.path.join(tmp, "out")
        r = subprocess.run(["nsenter", "-t", str(p.pid), "-n", CONFORMANCE, "server", "--url",
                            "http://127.0.0.1:%d/mcp" % port, "--suite", "all", "-o", out,
                            "--expected-failures", EXPECTED], capture_output=True, text=True, timeout=280)
        summary = r.stdout[r.stdout.find("=== SUMMARY ==="):]
        print("\n" + summary)
        expected = set(expected_failures())
        passed, failed, bad = [], [], []
        for d in sorted(glob.glob(os.path.join(out, "server-*"))):
            name = re.sub(r"^server-|-\d{4}-\d\d-\d\dT.*$", "", os.path.basename(d))
            with open(os.path.join(d, "checks.json")) as f:
                checks = json.load(f)
            fails = [c for c in checks if c["status"] == "FAILURE"]
            (failed if fails else passed).append(name)
            if fails and name not in expected:
                bad.append((name, [c.get("errorMessage") for c in fails]))
        print("conformance server scenarios: %d passed, %d failed (all expected: %s)"
              % (len(passed), len(failed), not bad))
        self.assertEqual(bad, [], summary)
        for name in ("server-initialize", "ping", "tools-list", "logging-set-level", "resources-list",
                     "prompts-list", "server-sse-multiple-streams", "server-sse-polling",
                     "dns-rebinding-protection", "completion-complete"):
            self.assertIn(name, passed)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-2000:])
        self.assertFalse(set(passed) & expected, "now passing, drop from the expected list: %s"
                         % sorted(set(passed) & expected))
        check_log()


if __name__ == "__main__":
    main()
