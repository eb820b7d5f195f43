"""Web pages and the gateway, with headless chromium as the browser. A page whose origin is in
cors.allowed_origins calls the API (preflight, answer, exposed request id); a page from any other
site gets nothing, and its "simple" text/plain POST, which browsers send without asking, runs no
turn; a name rebound to 127.0.0.1 (DNS rebinding) is refused by a gateway with no auth_token."""
import http.server
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import unittest

from nexo_harness import Nexo, main, write_config
from peers import FAKE_KEY, fake_requests, fake_reset, llm_yaml, start_fake, stop_fake

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NOBG = ["--no-first-run", "--no-default-browser-check", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-default-apps", "--metrics-recording-only",
        "--disable-breakpad", "--disable-domain-reliability"]

# Both pages report what they saw to their own origin's /report.
PAGE = """<!doctype html><script>
const GW = "http://127.0.0.1:%(gw)d";
const body = JSON.stringify({model: "main", messages: [{role: "user", content: "from a page"}]});
async function go() {
  const out = {page: "%(name)s"};
  try {
    const r = await fetch(GW + "/v1/chat/completions", {method: "POST", body,
      headers: {"content-type": "application/json", "authorization": "Bearer any"}});
    out.status = r.status;
    out.request_id = r.headers.get("x-request-id");
    out.answer = (await r.json()).choices[0].message.content;
  } catch (e) { out.error = String(e); }
  try {  /* a "simple" request: sent without a preflight, its answer unreadable */
    const r = await fetch(GW + "/v1/chat/completions", {method: "POST", mode: "no-cors", body,
      headers: {"content-type": "text/plain"}});
    out.simple = r.type;
  } catch (e) { out.simple = String(e); }
  await fetch("/report", {method: "POST", body: JSON.stringify(out)});
  %(next)s
}
go();
</script>"""


class Pages(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), PageHandler)
        self.gw = 0
        self.reports = queue.Queue()


class PageHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        port = self.server.server_address[1]
        name = "evil" if self.path.startswith("/evil") else "app"
        nxt = "location = 'http://evil.test:%d/evil';" % port if name == "app" else ""
        page = (PAGE % {"gw": self.server.gw, "name": name, "next": nxt}).encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def do_POST(self):
        data = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.server.reports.put(json.loads(data))
        self.send_response(204)
        self.end_headers()


class BrowserOrigin(unittest.TestCase):
    def setUp(self):
        self.fake, self.fport = start_fake()
        self.pages = Pages()
        threading.Thread(target=self.pages.serve_forever, daemon=True).start()
        self.tmp = tempfile.mkdtemp(prefix="nexo-browser-")
        self.app = "http://app.test:%d" % self.pages.server_address[1]
        self.n = None

    def tearDown(self):
        try:
            if self.n:
                self.assertEqual(self.n.stop(), 0)
        finally:
            if self.n:
                self.n.cleanup()
            self.pages.shutdown()
            self.pages.server_close()
            stop_fake(self.fake)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self, gateway_yaml):
        cfg = write_config(os.path.join(self.tmp, "cfg"), {"gateway.yaml": gateway_yaml,
                                                           "llm.yaml": llm_yaml(self.fport)})
        self.n = Nexo(config_dir=cfg)
        self.n.start()
        self.pages.gw = self.n.ports["gateway"]
        fake_reset(self.fport)

    def browse(self, url, reports):
        """Opens url in headless chromium (*.test names resolve to 127.0.0.1, nothing else does)
        and returns the pages' reports once `reports` came."""
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", *NOBG,
               "--user-data-dir=" + os.path.join(self.tmp, "profile"),
               "--host-resolver-rules=MAP *.test 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", url]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return {r["page"]: r for r in (self.pages.reports.get(timeout=30) for _ in range(reports))}
        finally:
            p.kill()
            p.wait()

    def test_listed_origin_is_served_and_others_are_refused(self):
        self.start("cors:\n  allowed_origins: [%s]\n" % self.app)
        got = self.browse(self.app + "/", 2)
        app, evil = got["app"], got["evil"]
        # the listed page: preflight passed, the answer and its request id readable
        self.assertEqual(app.get("status"), 200, app)
        self.assertEqual(app["answer"], "hello from fake")
        self.assertTrue((app.get("request_id") or "").startswith("req_"), app)
        self.assertEqual(app["simple"], "opaque")
        self.assertEqual(len(fake_requests(self.fport)), 2, "the listed page's two requests ran")
        # another site: its fetch fails, and its simple POST (sent, unreadable) ran no turn
        self.assertIn("Failed to fetch", evil.get("error", ""), evil)
        self.assertEqual(evil["simple"], "opaque")
        self.assertEqual(len(fake_requests(self.fport)), 2, "a page from another site ran a turn")

    def test_open_gateway_answers_loopback_names_only(self):
        self.start("limits: {max_connections: 64}\n")
        port = self.n.ports["gateway"]
        body = json.dumps({"model": "main", "messages": [{"role": "user", "content": "hi"}]})
        for host in ("evil.test:%d" % port, "evil.test", "127.0.0.1.evil.test:%d" % port):
            status, data, _ = self.n.request("POST", "/v1/chat/completions", body,
                                             {"Host": host, "Content-Type": "application/json"})
            self.assertEqual(status, 403, host)
            self.assertIn("not a loopback name", json.loads(data)["error"]["message"])
        self.assertEqual(fake_requests(self.fport), [])
        # a webhook proves itself by its signature: a TLS proxy in front may keep the public name
        status, data, _ = self.n.request("POST", "/webhooks/telegram/nobody", b"{}",
                                         {"Host": "bot.example.com", "Content-Type": "application/json"})
        self.assertNotEqual(status, 403, data)
        self.assertNotIn(b"loopback", data)
        for host in ("localhost:%d" % port, "127.0.0.1:%d" % port, "[::1]:%d" % port, "app.localhost"):
            status, _, headers = self.n.request("GET", "/v1/models", headers={"Host": host})
            self.assertEqual(status, 200, host)
            # no Origin, no CORS headers; but the answer would differ with one: a cache must know
            self.assertNotIn("access-control-allow-origin", headers)
            self.assertEqual(headers.get("vary"), "origin")
        # a page served from this machine (a local UI on another port) may call it
        status, _, headers = self.n.request("OPTIONS", "/v1/chat/completions", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-nexo-session"})
        self.assertEqual(status, 204)
        self.assertEqual(headers["access-control-allow-origin"], "http://localhost:3000")
        self.assertEqual(headers["access-control-allow-headers"], "content-type, x-nexo-session")
        self.assertEqual(headers["access-control-max-age"], "600")
        # an opaque origin (a sandboxed frame, a file) is not loopback
        status, _, _ = self.n.request("POST", "/v1/chat/completions", body, {"Origin": "null"})
        self.assertEqual(status, 403)
        self.assertEqual(fake_requests(self.fport), [])

    def test_gateway_with_a_token_serves_other_names(self):
        self.start('auth_token: "tok-%s"\ncors: {allowed_origins: ["*"], max_age: 1m}\n' % FAKE_KEY)
        port = self.n.ports["gateway"]
        status, _, _ = self.n.request("GET", "/v1/models", headers={"Host": "api.example.com:%d" % port,
                                                                     "Authorization": "Bearer tok-" + FAKE_KEY})
        self.assertEqual(status, 200)
        status, _, headers = self.n.request("OPTIONS", "/v1/messages", headers={
            "Origin": "https://any.example", "Access-Control-Request-Method": "POST"})
        self.assertEqual(status, 204)
        self.assertEqual(headers["access-control-max-age"], "60")
        status, _, headers = self.n.request("GET", "/v1/models", headers={"Origin": "https://any.example"})
        self.assertEqual(status, 401)  # the page still needs the token
        self.assertEqual(headers["access-control-allow-origin"], "https://any.example")
        status, _, headers = self.n.request("GET", "/v1/models", headers={"Origin": "null"})
        self.assertEqual(status, 403)  # an opaque origin (a sandboxed frame) is not "any page"
        self.assertNotIn("access-control-allow-origin", headers)


if __name__ == "__main__":
    main()
