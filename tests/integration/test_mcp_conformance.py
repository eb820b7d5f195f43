"""nexo's MCP client against @modelcontextprotocol/conformance's client scenarios.

The suite starts one scenario server per scenario and runs tests/tools/mcp_conformance_client.c
(built as NEXO_BUILD_DIR/tests/mcp_conformance_client, src/mcp/client.h over Streamable HTTP)
with the server's URL appended. The scenario servers listen(0) on every interface, so each run
happens in a fresh network namespace that has only loopback: unshare -n (we are root).

- initialize, tools_call and sse-retry must pass, with no FAILURE check (sse-retry: the GET
  that resumes the broken tools/call stream comes after the server's `retry:` delay and carries
  Last-Event-ID).
- elicitation-sep1034-client-defaults: elicitation/create answered with the schema's defaults.
- auth/*: the OAuth 2.1 client (src/mcp/oauth.c) through discovery, registration (dynamic,
  pre-registered, client ID metadata document), PKCE, scopes and step-up, token endpoint
  authentication methods and the client credentials grant.
- `--suite all` must match tests/integration/mcp_conformance_expected.yaml (empty today: every
  client scenario passes); the pass counts are printed.
"""
import re
import glob
import json
import os
import shlex
import subprocess
import tempfile
import unittest

SRC = os.environ.get("NEXO_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("NEXO_BUILD_DIR") or os.path.join(SRC, "build")
PEERS = os.environ.get("NEXO_NPM_PEERS") or os.path.join(SRC, "build", "npm-peers")
CONFORMANCE = os.path.join(PEERS, "node_modules", ".bin", "conformance")
CLIENT = os.path.join(BUILD, "tests", "mcp_conformance_client")
EXPECTED = os.path.join(SRC, "tests", "integration", "mcp_conformance_expected.yaml")


def run_isolated(args, timeout):
    """Runs args inside a new network namespace with loopback up; returns (rc, output)."""
    inner = "ip link set lo up && exec " + " ".join(shlex.quote(a) for a in args)
    p = subprocess.run(["unshare", "-n", "sh", "-c", inner], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace")


def checks_of(outdir, scenario):
    dirs = sorted(glob.glob(os.path.join(outdir, scenario + "-*")))
    if not dirs:
        return None
    with open(os.path.join(dirs[-1], "checks.json")) as f:
        return json.load(f)


class McpConformanceClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(CONFORMANCE):
            raise AssertionError("%s missing: run scripts/install-npm-peers.sh" % CONFORMANCE)
        if not os.access(CLIENT, os.X_OK):
            raise AssertionError("%s missing: build the mcp_conformance_client target" % CLIENT)
        rc, out = run_isolated(["true"], 20)
        if rc != 0:
            raise AssertionError("unshare -n does not work here (needs root): " + out)

    def run_scenario(self, scenario):
        with tempfile.TemporaryDirectory() as out:
            rc, log = run_isolated([CONFORMANCE, "client", "--command", CLIENT, "--scenario", scenario,
                                    "--timeout", "20000", "-o", out], 120)
            checks = checks_of(out, scenario)
        self.assertEqual(rc, 0, log)
        self.assertIsNotNone(checks, log)
        failed = [c for c in checks if c["status"] == "FAILURE"]
        self.assertEqual(failed, [], log)
        return {c["id"]: c for c in checks if c["status"] != "INFO"}

    def test_initialize(self):
        checks = self.run_scenario("initialize")
        self.assertEqual(checks["mcp-client-initialization"]["status"], "SUCCESS")

    def test_tools_call(self):
        checks = self.run_scenario("tools_call")
        self.assertEqual(checks["tool-add-numbers"]["status"], "SUCCESS")
        self.assertEqual(checks["tool-add-numbers"]["details"]["result"], 3)

    def test_sse_retry(self):
        checks = self.run_scenario("sse-retry")
        self.assertEqual(checks["client-sse-graceful-reconnect"]["status"], "SUCCESS")
        self.assertEqual(checks["client-sse-retry-timing"]["status"], "SUCCESS",
                         checks["client-sse-retry-timing"])
        self.assertEqual(checks["client-sse-last-event-id"]["status"], "SUCCESS")
        self.assertTrue(checks["client-sse-last-event-id"]["details"]["lastEventIds"])

    def test_elicitation_defaults(self):
        checks = self.run_scenario("elicitation-sep1034-client-defaults")
        for kind in ("string", "integer", "number", "enum", "boolean"):
            self.assertEqual(checks["client-elicitation-sep1034-%s-default" % kind]["status"], "SUCCESS")

    def test_auth_step_up_and_retry_limit(self):
        checks = self.run_scenario("auth/scope-step-up")
        self.assertEqual(checks["scope-step-up-initial"]["status"], "SUCCESS")
        self.assertEqual(checks["scope-step-up-escalation"]["status"], "SUCCESS")
        self.assertEqual(checks["pkce-verifier-matches-challenge"]["status"], "SUCCESS")
        checks = self.run_scenario("auth/scope-retry-limit")
        self.assertEqual(checks["scope-retry-limit"]["status"], "SUCCESS")

    def test_auth_client_credentials_jwt(self):
        checks = self.run_scenario("auth/client-credentials-jwt")
        self.assertEqual(checks["client-credentials-jwt-verified"]["status"], "SUCCESS")

    def test_suite_matches_expected_failures(self):
        with tempfile.TemporaryDirectory() as out:
            rc, log = run_isolated([CONFORMANCE, "client", "--command", CLIENT, "--suite", "all",
                                    "--timeout", "20000", "-o", out, "--expected-failures", EXPECTED], 280)
        self.assertEqual(rc, 0, log[-4000:])
        self.assertIn("all failures are expected", log)
        passed = re.findall(r"\u2713 (\S+): (\d+) passed, 0 failed", log)
        failed = re.findall(r"\u2717 (\S+): (\d+) passed, (\d+) failed", log)
        print("\nconformance client scenarios: %d passed, %d failed (checks passed: %d)"
              % (len(passed), len(failed), sum(int(n) for _, n in passed)))
        for name in ("initialize", "tools_call", "sse-retry", "elicitation-sep1034-client-defaults",
                     "auth/metadata-default", "auth/scope-step-up", "auth/pre-registration",
                     "auth/client-credentials-basic", "auth/resource-mismatch"):
            self.assertRegex(log, r"\u2713 %s: \d+ passed, 0 failed" % re.escape(name))


if __name__ == "__main__":
    unittest.main(verbosity=2)
