"""Drives the built nexo binary for integration tests: start it on free loopback ports, wait
for readiness (READY=1 on $NOTIFY_SOCKET, then /readyz 200), talk HTTP, stop it."""
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

NEXO_BIN = os.environ.get("NEXO_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "nexo")
TEST_DATA = os.environ.get("NEXO_TEST_DATA") or os.path.join(os.path.dirname(__file__), "..", "data")
START_TIMEOUT = 20.0
STARTED = []  # every Nexo started in this process, in order (main()'s result shows their logs)


def run_cli(*args, env=None, cwd=None, timeout=30):
    """Runs nexo with args; returns CompletedProcess with text stdout/stderr."""
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run([NEXO_BIN, *args], capture_output=True, text=True, env=e, cwd=cwd,
                          timeout=timeout)


class Nexo:
    """One nexo process. Listeners on port 0; the chosen ports are read from the ready line."""

    def __init__(self, config_dir=None, args=(), env=None, listen="127.0.0.1:0"):
        self.tmp = tempfile.mkdtemp(prefix="nexo-it-")
        self.data_dir = os.path.join(self.tmp, "data")
        self.log_path = os.path.join(self.tmp, "nexo.log")
        self.config_dir = config_dir
        self.args = list(args)
        self.env = env or {}
        self.listen = listen
        self.proc = None
        self.ports = {}

    # --- lifecycle ---
    def start(self, wait=True):
        sock_path = os.path.join(self.tmp, "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(sock_path)
        env = dict(os.environ)
        env.pop("NEXO_CONFIG", None)
        env.update({"NOTIFY_SOCKET": sock_path, "ASAN_OPTIONS": env.get("ASAN_OPTIONS", "")})
        env.update(self.env)
        cmd = [NEXO_BIN, "run", "--data", self.data_dir, "--listen", self.listen,
               "--metrics-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        if self.config_dir:
            cmd += ["--config", self.config_dir]
        cmd += self.args
        self.log = open(self.log_path, "wb")
        self.log_tail = None
        if self not in STARTED:
            STARTED.append(self)
        # cwd = the temp dir, so no stray ./config is picked up.
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.tmp)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("nexo not ready in %.0fs; log:\n%s" % (timeout, self.read_log()))
            r, _, _ = select.select([self.notify], [], [], min(left, 0.2))
            if r:
                msg = self.notify.recv(4096).decode()
                if "READY=1" in msg:
                    break
            if self.proc.poll() is not None:
                raise AssertionError("nexo exited with %d before ready; log:\n%s"
                                     % (self.proc.returncode, self.read_log()))
        m = re.search(r"gateway http://[^:]+:(\d+), metrics http://[^:]+:(\d+)/metrics, "
                      r"admin http://[^:]+:(\d+)", self.read_log())
        assert m, "no ready line in log:\n" + self.read_log()
        self.ports = {"gateway": int(m.group(1)), "metrics": int(m.group(2)), "admin": int(m.group(3))}
        status, body, _ = self.request("GET", "/readyz")
        assert status == 200, "readyz %d %s" % (status, body)
        return self

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=30):
        code = self.proc.wait(timeout=timeout)
        self.check_sanitizers()
        return code

    def stop(self, timeout=30):
        """SIGTERM, wait, and fail on any sanitizer report in the log. Returns the exit code."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.report_hang(timeout)
                self.proc.kill()
                self.proc.wait()
        self.check_sanitizers()
        return self.proc.returncode if self.proc else None

    def report_hang(self, timeout):
        """A nexo that does not stop: its threads' stacks (when gdb is here) and its log's end go
        to stderr, so that a rare hang in CI can be diagnosed from the output alone."""
        out = ["nexo (pid %d) did not stop within %ds of SIGTERM" % (self.proc.pid, timeout)]
        gdb = shutil.which("gdb")
        if gdb:
            try:
                r = subprocess.run([gdb, "-p", str(self.proc.pid), "-batch", "-nx",
                                    "-ex", "thread apply all bt"], capture_output=True, text=True,
                                   timeout=60)
                out.append(r.stdout[-12000:])
            except (subprocess.TimeoutExpired, OSError) as e:
                out.append("gdb: %s" % e)
        out.append("the end of its log:\n" + self.read_log()[-4000:])
        print("\n".join(out), file=sys.stderr, flush=True)

    def check_sanitizers(self):
        """ASan/UBSan/TSan builds of nexo report into the log; any report fails the test."""
        log = self.read_log()
        m = re.search(r"ERROR: (Address|Leak)Sanitizer|runtime error:|WARNING: ThreadSanitizer", log)
        if m:
            raise AssertionError("sanitizer report in nexo's log:\n" + log[m.start():][:6000])

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        if getattr(self, "notify", None):
            self.notify.close()
        self.log_tail = self.read_log()[-LOG_TAIL:]  # for a failure reported after the cleanup
        shutil.rmtree(self.tmp, ignore_errors=True)

    def restart(self):
        """Stops nexo and starts it again on the same data; the exit code of the stop."""
        code = self.stop()
        self.notify.close()
        os.unlink(os.path.join(self.tmp, "notify.sock"))
        self.log.close()
        self.start()
        return code

    def read_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=10):
        """Waits until the log matches the regex (polling the file: the log has no other
        signal); returns the match."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.read_log())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError("log never matched %r:\n%s" % (pattern, self.read_log()))

    # --- HTTP ---
    def request(self, method, path, body=None, headers=None, listener="gateway", timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[listener], timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, data, dict((k.lower(), v) for k, v in resp.getheaders())
        finally:
            conn.close()

    def get_json(self, path, listener="gateway", headers=None):
        status, body, _ = self.request("GET", path, listener=listener, headers=headers)
        return status, json.loads(body)

    def connect(self, listener="gateway", timeout=10):
        s = socket.create_connection(("127.0.0.1", self.ports[listener]), timeout=timeout)
        return s


def recv_all(sock, timeout=10):
    """Reads until the peer closes (or timeout); returns bytes."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while True:
            b = sock.recv(65536)
            if not b:
                break
            chunks.append(b)
    except (ConnectionResetError, socket.timeout):
        pass
    return b"".join(chunks)


def write_config(root, files):
    """Writes {relative path: text} under root; returns root."""
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return root


LOG_TAIL = 4000


class LogTailResult(unittest.TextTestResult):
    """A failed test's output ends with the end of the log of each nexo that ran during it (or
    still runs: a class's shared one), so that a failure seen only in CI can be read from CI's
    output alone. unittest reports after tearDown, so a cleaned-up nexo's tail was kept."""

    def startTest(self, test):
        self.first_started = len(STARTED)
        super().startTest(test)

    def show_logs(self):
        first = getattr(self, "first_started", 0)
        shown = [n for i, n in enumerate(STARTED)
                 if i >= first or (n.proc and n.proc.poll() is None and n.log_tail is None)]
        for n in shown[-3:]:
            tail = n.log_tail if n.log_tail is not None else n.read_log()[-LOG_TAIL:]
            self.stream.write("\n--- the end of nexo's log (pid %s) ---\n%s\n--- end ---\n"
                              % (n.proc.pid if n.proc else "?", tail))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.show_logs()

    def addError(self, test, err):
        super().addError(test, err)
        self.show_logs()

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self.show_logs()


def main():
    unittest.main(verbosity=2, testRunner=unittest.TextTestRunner(verbosity=2, resultclass=LogTailResult))
