"""An agent uses an MCP server's tool: nexo starts @modelcontextprotocol/server-everything over
stdio from mcp.yaml, registers its tools as mcp_everything_*, and a turn calls one of them."""
import json
import os
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


if __name__ == "__main__":
    main()
