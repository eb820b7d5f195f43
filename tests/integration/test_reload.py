# NX_TEST_LABELS: threaded (also run against the TSan build)
"""SIGHUP: a valid configuration is swapped in; an invalid one is reported with file:line:col
and the running one stays."""
import errno
import os
import re
import signal
import tempfile
import time
import unittest

from nexo_harness import Nexo, main, write_config


class Reload(unittest.TestCase):
    def test_valid_reload_swaps_invalid_reload_keeps_old(self):
        with tempfile.TemporaryDirectory() as cfg:
            write_config(cfg, {"gateway.yaml": "auth_token: first-token-aaaaaaaa\n"})
            n = Nexo(config_dir=cfg)
            try:
                n.start()

                def status(token):
                    return n.request("GET", "/admin/status", listener="admin",
                                     headers={"Authorization": "Bearer " + token})[0]

                self.assertEqual(status("first-token-aaaaaaaa"), 200)
                write_config(cfg, {"gateway.yaml": "auth_token: second-token-bbbbbbbb\n"})
                n.signal(signal.SIGHUP)
                n.wait_log(r"configuration reloaded")
                self.assertEqual(status("second-token-bbbbbbbb"), 200)
                self.assertEqual(status("first-token-aaaaaaaa"), 401)

                write_config(cfg, {"gateway.yaml": "auth_token: third-token-cccccccc\nlisten: [1\n"})
                n.signal(signal.SIGHUP)
                n.wait_log(r"reload failed")
                log = n.read_log()
                self.assertRegex(log, re.escape(os.path.join(cfg, "gateway.yaml")) + r":\d+:\d+: ")
                self.assertEqual(status("second-token-bbbbbbbb"), 200)
                self.assertEqual(status("third-token-cccccccc"), 401)

                _, body, _ = n.request("GET", "/metrics", listener="metrics",
                                       headers={"Authorization": "Bearer second-token-bbbbbbbb"})
                text = body.decode()
                self.assertIn('nexo_config_reloads_total{result="ok"} 1', text)
                self.assertIn('nexo_config_reloads_total{result="error"} 1', text)
                self.assertEqual(n.stop(), 0)
            finally:
                n.cleanup()

    def test_a_sighup_during_a_reload_reloads_again_after_it(self):
        """An edit saved while a reload is reading the files may come after it read them: the
        SIGHUP that follows it is not dropped, a second reload runs once the first is done."""
        with tempfile.TemporaryDirectory() as cfg:
            write_config(cfg, {"gateway.yaml": "auth_token: first-token-aaaaaaaa\n"})
            n = Nexo(config_dir=cfg)
            try:
                n.start()
                # memory.yaml, read after gateway.yaml, as a FIFO: the reload waits there
                fifo = os.path.join(cfg, "memory.yaml")
                os.mkfifo(fifo)
                n.signal(signal.SIGHUP)
                deadline = time.monotonic() + 10
                while True:  # until the reload has the FIFO open: it read gateway.yaml before
                    try:
                        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                        break
                    except OSError as e:
                        if e.errno != errno.ENXIO or time.monotonic() > deadline:
                            raise
                        time.sleep(0.01)
                write_config(cfg, {"gateway.yaml": "auth_token: second-token-bbbbbbbb\n"})
                n.signal(signal.SIGHUP)
                n.wait_log(r"SIGHUP during a reload: reloading again after it")
                os.unlink(fifo)  # the second reload finds no memory.yaml
                os.write(fd, b"{}\n")
                os.close(fd)
                n.wait_log(r"configuration reloaded(.|\n)*configuration reloaded")

                def status(token):
                    return n.request("GET", "/admin/status", listener="admin",
                                     headers={"Authorization": "Bearer " + token})[0]

                self.assertEqual(status("second-token-bbbbbbbb"), 200)
                self.assertEqual(status("first-token-aaaaaaaa"), 401)
                self.assertEqual(n.stop(), 0)
            finally:
                n.cleanup()

    def test_files_applied_at_restart_are_named_when_they_change(self):
        # the bus, MCP servers and channels are set up at start: a reload says so, and names the
        # files; one that changed nothing of them says nothing
        with tempfile.TemporaryDirectory() as cfg:
            write_config(cfg, {"mcp.yaml": "mcp:\n  enabled: false\n"})
            n = Nexo(config_dir=cfg)
            try:
                n.start()
                write_config(cfg, {"gateway.yaml": "limits: {stream_keepalive: 10s}\n"})
                n.signal(signal.SIGHUP)
                n.wait_log(r"configuration reloaded")
                self.assertNotIn("next restart", n.read_log())
                write_config(cfg, {"mcp.yaml": "mcp:\n  enabled: true\n",
                                   "broker.yaml": "broker:\n  type: local\n"})
                n.signal(signal.SIGHUP)
                n.wait_log(r"configuration reloaded from .*\n(.|\n)*configuration reloaded")
                self.assertRegex(n.read_log(), r"(broker\.yaml, mcp\.yaml|mcp\.yaml, broker\.yaml) changed: "
                                               r"applied at the next restart")
                os.unlink(os.path.join(cfg, "mcp.yaml"))
                write_config(cfg, {"mcp_server.yaml": "enabled: false\n"})
                n.signal(signal.SIGHUP)
                n.wait_log(r"mcp\.yaml, mcp_server\.yaml changed: applied at the next restart")
                self.assertEqual(n.stop(), 0)
            finally:
                n.cleanup()

    def test_a_removed_provider_or_agent_leaves_the_gauges(self):
        # Gauges state what is now: a provider gone from llm.yaml no longer shows a breaker
        # state, an agent gone (or without a budget now) no longer shows a budget left; those
        # that stay keep theirs through the reload.
        llm = ("providers:\n  anthropic: {api_key: sk-fake-key, base_url: http://127.0.0.1:9}\n"
               "  spare: {kind: openai, api_key: sk-fake-key, base_url: http://127.0.0.1:9/v1}\n")
        agents = ("agents:\n"
                  "  - id: kate\n    model: {provider: anthropic, model: claude-haiku-4-5}\n"
                  "    limits: {daily_token_budget: 1000}\n"
                  "  - id: tom\n    model: {provider: spare, model: gpt-4o-mini}\n"
                  "    limits: {daily_token_budget: 2000}\n")
        with tempfile.TemporaryDirectory() as cfg:
            write_config(cfg, {"llm.yaml": llm, "agents.yaml": agents})
            n = Nexo(config_dir=cfg)
            try:
                n.start()

                def metrics():
                    return n.request("GET", "/metrics", listener="metrics")[1].decode()

                text = metrics()
                for series in ('nexo_llm_breaker_state{provider="anthropic"} 0',
                               'nexo_llm_breaker_state{provider="spare"} 0',
                               'nexo_agent_tokens_budget_remaining{agent="kate"} 1000',
                               'nexo_agent_tokens_budget_remaining{agent="tom"} 2000'):
                    self.assertIn(series, text)
                write_config(cfg, {"llm.yaml": llm.split("  spare")[0],
                                   "agents.yaml": agents.split("  - id: tom")[0]})
                n.signal(signal.SIGHUP)
                n.wait_log(r"configuration reloaded")
                text = metrics()
                self.assertIn('nexo_llm_breaker_state{provider="anthropic"} 0', text)
                self.assertIn('nexo_agent_tokens_budget_remaining{agent="kate"} 1000', text)
                self.assertNotIn('provider="spare"} ', text.split("nexo_llm_breaker_state", 1)[1][:400])
                self.assertNotIn('nexo_agent_tokens_budget_remaining{agent="tom"}', text)
                self.assertNotIn('nexo_llm_breaker_state{provider="spare"}', text)
                self.assertEqual(n.stop(), 0)
            finally:
                n.cleanup()


if __name__ == "__main__":
    main()
