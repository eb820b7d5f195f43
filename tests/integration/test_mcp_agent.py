"""An agent uses an MCP server's tool: nexo starts @modelcontextprotocol/server-everything over
stdio from mcp.yaml, registers its tools as mcp_everything_*, and a turn calls one of them.

With `sampling: {enabled: true, agent: kate}` and `roots: workspaces` the server's
trigger-sampling-request tool makes it ask nexo for sampling/createMessage, answered by one
tool-less turn of kate through the fake LLM, and get-roots-list shows kate's workspace as a
file:// root. The MCP metrics are read from /metrics; a kill -9 of the server is followed by a
restart (nexo_mcp_server_restarts_total)."""
import json
import os
import signal
import tempfile
import time
import unittest
import urllib.request

from nexo_harness import Nexo, main, write_config
from test_api_sdk import PEERS, script, start_fake


class McpAgent(unittest.TestCase):
    def test_agent_calls_an_mcp_tool(self):
        server = os.path.join(PEERS, "node_modules", ".bin", "mcp-server-everything")
        self.assertTrue(os.path.exists(server), "run scripts/install-npm-peers.sh")
        fake, port = start_fake()
        try:
            with tempfile.TemporaryDirectory() as cfg:
                write_config(cfg, {
                    "mcp.yaml": "mcp:\n  enabled: true\n  servers:\n"
                                "    everything: {transport: stdio, command: %s, args: [stdio]}\n" % server,
                    "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n"
                                % port,
                    "agents.yaml": "agents:\n  - {id: kate, model: {provider: anthropic, model: m},"
                                   " allowed_tools: [\"mcp_everything_*\"]}\n",
                })
                n = Nexo(config_dir=cfg).start()
                try:
                    deadline = time.monotonic() + 30
                    tools = []
                    while time.monotonic() < deadline:
                        st = n.get_json("/admin/status", listener="admin")[1]
                        servers = st.get("mcp", {}).get("servers", [])
                        tools = servers[0].get("tools", []) if servers else []
                        if "mcp_everything_get-sum" in tools:
                            break
                        time.sleep(0.1)
                    self.assertIn("mcp_everything_get-sum", tools)
                    script(port, [{"tool_use": {"name": "mcp_everything_get-sum", "input": {"a": 2, "b": 40}}},
                                  {"text": "it is 42"}])
                    body = json.dumps({"model": "kate", "messages": [{"role": "user", "content": "2+40?"}]})
                    status, data, _ = n.request("POST", "/v1/chat/completions", body=body.encode(), timeout=30)
                    self.assertEqual(status, 200, data)
                    reqs = json.loads(urllib.request.urlopen("http://127.0.0.1:%d/_requests" % port).read())
                    names = [t["name"] for t in reqs[0]["body"]["tools"]]
                    self.assertIn("mcp_everything_echo", names)
                    result = reqs[1]["body"]["messages"][-1]["content"][0]
                    self.assertEqual(result["type"], "tool_result")
                    self.assertIn("42", result["content"])
                    self.assertFalse(result.get("is_error", False))
                    self.assertEqual(n.stop(), 0)
                finally:
                    n.cleanup()
        finally:
            fake.kill()
            fake.wait()


    def wait_tools(self, n, name, timeout=60):
        deadline = time.monotonic() + timeout
        srv = {}
        while time.monotonic() < deadline:
            servers = n.get_json("/admin/status", listener="admin")[1].get("mcp", {}).get("servers", [])
            srv = servers[0] if servers else {}
            if srv.get("state") == "ready" and name in srv.get("tools", []):
                return srv
            time.sleep(0.1)
        self.fail("%s not registered: %s" % (name, srv))

    def test_sampling_roots_metrics_and_restart(self):
        server = os.path.join(PEERS, "node_modules", ".bin", "mcp-server-everything")
        fake, port = start_fake()
        try:
            with tempfile.TemporaryDirectory() as cfg:
                ws = os.path.join(cfg, "ws kate")
                os.mkdir(ws)
                write_config(cfg, {
                    "mcp.yaml": "mcp:\n  enabled: true\n  servers:\n"
                                "    everything:\n      transport: stdio\n      command: %s\n      args: [stdio]\n"
                                "      sampling: {enabled: true, agent: kate, max_tokens_cap: 64}\n"
                                "      roots: workspaces\n" % server,
                    "llm.yaml": "providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:%d}\n"
                                % port,
                    "agents.yaml": "agents:\n  - {id: kate, model: {provider: anthropic, model: m},"
                                   " workspace: \"ws kate\", allowed_tools: [\"mcp_everything_*\"]}\n"
                                   # its workspace holds the configuration: no root for it
                                   "  - {id: nosy, model: {provider: anthropic, model: m}, workspace: .}\n"
                                   # one holds another agent's: none for it either, one for the inner
                                   "  - {id: outer, model: {provider: anthropic, model: m}, workspace: team}\n"
                                   "  - {id: inner, model: {provider: anthropic, model: m}, workspace: team/in}\n",
                })
                n = Nexo(config_dir=cfg).start()
                try:
                    srv = self.wait_tools(n, "mcp_everything_trigger-sampling-request")
                    self.assertIn("mcp_everything_get-roots-list", srv["tools"])
                    script(port, [{"tool_use": {"name": "mcp_everything_trigger-sampling-request",
                                                "input": {"prompt": "say something", "maxTokens": 500}}},
                                  {"text": "sampled words"},
                                  {"tool_use": {"name": "mcp_everything_get-roots-list", "input": {}}},
                                  {"text": "all done"}])
                    body = json.dumps({"model": "kate", "messages": [{"role": "user", "content": "go"}]})
                    status, data, _ = n.request("POST", "/v1/chat/completions", body=body.encode(), timeout=60)
                    self.assertEqual(status, 200, data)
                    self.assertIn("all done", data.decode())
                    reqs = json.loads(urllib.request.urlopen("http://127.0.0.1:%d/_requests" % port).read())
                    self.assertEqual(len(reqs), 4, [r["body"].get("messages") for r in reqs])
                    sampling = reqs[1]["body"]
                    self.assertNotIn("tools", sampling)          # one completion, no tools offered
                    self.assertEqual(sampling["max_tokens"], 64)  # capped
                    self.assertIn("You are a helpful test server.", json.dumps(sampling.get("system")))
                    self.assertIn("say something", json.dumps(sampling["messages"]))
                    result = reqs[2]["body"]["messages"][-1]["content"][0]
                    self.assertEqual(result["type"], "tool_result")
                    self.assertIn("sampled words", result["content"])
                    self.assertFalse(result.get("is_error", False))
                    roots = reqs[3]["body"]["messages"][-1]["content"][0]["content"]
                    self.assertIn("file://" + os.path.realpath(ws).replace(" ", "%20"), roots)
                    self.assertIn("kate", roots)
                    self.assertNotIn("nosy", roots)
                    self.assertIn("inner", roots)
                    self.assertNotIn("outer", roots)

                    _, metrics, _ = n.request("GET", "/metrics", listener="metrics")
                    metrics = metrics.decode()
                    self.assertRegex(metrics, r'nexo_mcp_calls_total\{server="everything",'
                                              r'tool="trigger-sampling-request",outcome="ok"\} 1')
                    self.assertRegex(metrics, r'nexo_mcp_sampling_requests_total\{server="everything",'
                                              r'outcome="ok"\} 1')
                    self.assertRegex(metrics, r'nexo_mcp_server_up\{server="everything"\} 1')
                    self.assertRegex(metrics, r'nexo_mcp_call_seconds_count\{server="everything",'
                                              r'tool="get-roots-list"\} 1')

                    os.kill(srv["pid"], signal.SIGKILL)
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        st = n.get_json("/admin/status", listener="admin")[1]["mcp"]["servers"][0]
                        if st["restarts"] >= 1 and st["state"] == "ready" and st["pid"] != srv["pid"]:
                            break
                        time.sleep(0.1)
                    self.assertEqual((st["state"], st["restarts"] >= 1), ("ready", True), st)
                    _, metrics, _ = n.request("GET", "/metrics", listener="metrics")
                    self.assertRegex(metrics.decode(), r'nexo_mcp_server_restarts_total\{server="everything"\} [1-9]')
                    self.assertEqual(n.stop(), 0)
                finally:
                    n.cleanup()
        finally:
            fake.kill()
            fake.wait()


if __name__ == "__main__":
    main()
