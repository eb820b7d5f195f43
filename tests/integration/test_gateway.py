# NX_TEST_LABELS: threaded (also run against the TSan build)
"""The gateway on embedded defaults: health, readiness, metrics (checked by promtool), the admin
console, and the data directory's permissions. Then a gateway with an agent (on the fake LLM), a
WhatsApp channel, an MCP client server and the MCP server in use: its whole /metrics passes
promtool, and every nexo family it shows is documented in docs/observability.md."""
import json
import os
import re
import stat
import subprocess
import tempfile
import unittest

from nexo_harness import Nexo, main, write_config
from peers import SRC, start_fake, start_nexo, stop_all


class Gateway(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.n = Nexo().start()

    @classmethod
    def tearDownClass(cls):
        cls.n.stop()
        cls.n.cleanup()

    def test_healthz_and_health_answer_ok(self):
        for path in ("/healthz", "/health"):
            status, body, headers = self.n.request("GET", path)
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(body), {"status": "ok"})
            self.assertEqual(headers["content-type"], "application/json")

    def test_readyz_and_ready_report_each_check(self):
        for path in ("/readyz", "/ready"):
            status, body = self.n.get_json(path)
            self.assertEqual(status, 200)
            self.assertEqual(body["status"], "ready")
            self.assertEqual(body["checks"], {"config": True, "store": True, "bus": True})
            self.assertEqual(body["bus_mode"], "in-process")

    def test_unknown_path_is_404(self):
        status, _, _ = self.n.request("GET", "/no/such/thing")
        self.assertEqual(status, 404)

    def test_metrics_pass_promtool(self):
        self.n.request("GET", "/healthz")
        status, body, headers = self.n.request("GET", "/metrics", listener="metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))
        text = body.decode()
        for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                     "process_open_fds", "process_start_time_seconds", "nexo_build_info",
                     "nexo_ready 1"):
            self.assertIn(name, text)
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr.decode() + r.stdout.decode())

    def test_admin_page_and_status(self):
        status, body, headers = self.n.request("GET", "/", listener="admin")
        self.assertEqual(status, 200)
        self.assertIn(b"<title>nexo admin</title>", body)
        status, st = self.n.get_json("/admin/status", listener="admin")
        self.assertEqual(status, 200)
        self.assertTrue(st["ready"])
        self.assertEqual(st["listeners"]["gateway"]["port"], self.n.ports["gateway"])

    def test_admin_log_level_rejects_invalid_json_and_stays_up(self):
        status, body, _ = self.n.request("POST", "/admin/log-level", body=b'{"level": ',
                                         listener="admin",
                                         headers={"Content-Type": "application/json"})
        self.assertEqual(status, 400)
        self.assertIn("invalid JSON", json.loads(body)["error"]["message"])
        status, body, _ = self.n.request("POST", "/admin/log-level", body=b'{"level":"loud"}',
                                         listener="admin")
        self.assertEqual(status, 400)
        status, body, _ = self.n.request("POST", "/admin/log-level", body=b'{"level":"info"}',
                                         listener="admin")
        self.assertEqual((status, json.loads(body)), (200, {"level": "info"}))
        self.assertEqual(self.n.request("GET", "/healthz")[0], 200)

    def test_data_dir_is_private(self):
        st = os.stat(self.n.data_dir)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o700)
        db = os.path.join(self.n.data_dir, "nexo.db")
        self.assertEqual(stat.S_IMODE(os.stat(db).st_mode), 0o600)


class MetricsWithFeatures(unittest.TestCase):
    """/metrics once the agent, LLM, tool, channel, MCP client and MCP server families exist."""

    @classmethod
    def setUpClass(cls):
        cls.fake, port = start_fake()
        cls.tmp = tempfile.mkdtemp(prefix="nexo-metrics-")
        cfg = write_config(os.path.join(cls.tmp, "config"), {
            "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n"
                        % port,
            "agents.yaml": "agents:\n  - id: main\n    model: {provider: anthropic, model: m}\n"
                           "    allowed_tools: [time_now]\n"
                           "    inbound_bindings: [{plugin: whatsapp, instance: sales}]\n",
            "plugins/whatsapp.yaml": "whatsapp:\n  - instance: sales\n    phone_number_id: \"100\"\n"
                                     "    access_token: wa-token\n    app_secret: wa-secret\n"
                                     "    verify_token: wa-verify\n    api_url: http://127.0.0.1:9\n",
            # A server that cannot start: its up gauge is 0 and it is retried.
            "mcp.yaml": "mcp:\n  enabled: true\n  servers:\n"
                        "    broken: {transport: stdio, command: /bin/false}\n",
            "mcp_server.yaml": "enabled: true\nexpose_tools: [time_now]\n",
        })
        cls.n = start_nexo(Nexo(config_dir=cfg, env={"ANTHROPIC_API_KEY": "", "ANTHROPIC_BASE_URL": ""}),
                           cls.fake)

    @classmethod
    def tearDownClass(cls):
        stop_all(cls.n, cls.fake, cls.tmp)

    def mcp(self, msg, sid=None):
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
             "MCP-Protocol-Version": "2025-06-18"}
        if sid:
            h["Mcp-Session-Id"] = sid
        status, body, headers = self.n.request("POST", "/mcp", body=json.dumps(msg), headers=h, timeout=30)
        self.assertIn(status, (200, 202), body)
        return body.decode(), headers

    def scrape(self):
        status, body, headers = self.n.request("GET", "/metrics", listener="metrics")
        self.assertEqual(status, 200)
        return body

    def test_full_exposition_passes_promtool_and_is_documented(self):
        _, h = self.mcp({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                         "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                    "clientInfo": {"name": "t", "version": "1"}}})
        sid = h["mcp-session-id"]
        self.mcp({"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
        body, _ = self.mcp({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                            "params": {"name": "ask_main", "arguments": {"message": "hi"}}}, sid)
        self.assertIn("hello from fake", body)
        self.mcp({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                  "params": {"name": "time_now", "arguments": {}}}, sid)
        self.mcp({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "nope"}}, sid)
        # A webhook with a bad signature is dropped and counted.
        status, _, _ = self.n.request("POST", "/webhooks/whatsapp/sales", body=b'{"entry":[]}',
                                      headers={"Content-Type": "application/json",
                                               "X-Hub-Signature-256": "sha256=" + "0" * 64})
        self.assertGreaterEqual(status, 400)

        body = self.scrape()
        text = body.decode()
        for needle in ('nexo_mcp_server_calls_total{tool="ask_main",outcome="ok"} 1',
                       'nexo_mcp_server_calls_total{tool="(unknown)",outcome="error"} 1',
                       'nexo_agent_turns_total{agent="main",outcome="ok"}',
                       'nexo_agent_turn_seconds_count{agent="main"}',
                       "nexo_llm_requests_total{", "nexo_tool_calls_total{",
                       "nexo_llm_latency_seconds_bucket{", 'nexo_mcp_server_up{server="broken"} 0',
                       'nexo_channel_dropped_total{channel="whatsapp"',
                       "nexo_http_requests_total{", "nexo_store_commits_total", "nexo_bus_mode{"):
            self.assertIn(needle, text)
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr.decode() + r.stdout.decode())

        with open(os.path.join(SRC, "docs", "observability.md")) as f:
            doc = f.read()
        families = re.findall(r"^# TYPE (\S+) ", text, re.M)
        self.assertGreater(len(families), 20)
        missing = [m for m in families if not m.startswith("process_") and "`%s`" % m not in doc]
        self.assertEqual(missing, [], "families not documented in docs/observability.md")


if __name__ == "__main__":
    main()
