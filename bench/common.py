"""Shared by the channel benchmarks (bench/telegram_bench.py, bench/whatsapp_bench.py): one JSON
line per figure, free loopback ports, child processes that are all killed at the end (also on
error), the instant fake model (tests/fakes/fake_llm.py --instant, with TCP_NODELAY), and nexo
started on a config directory written from {file: text}, ready once it sends READY=1 on
$NOTIFY_SOCKET."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, ".."))
FAKES = os.path.join(SRC, "tests", "fakes")
KEY = "sk-fake-key"
CHILDREN = []

sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
from peers import free_port  # noqa: E402,F401 (re-exported)


def emit(**kw):
    print(json.dumps(kw), flush=True)


def pct(v, p):
    s = sorted(v)
    return round(s[min(len(s) - 1, int(len(s) * p / 100.0))], 2)


def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, **kw)
    CHILDREN.append(p)
    return p


def kill(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def ready_line(p, what):
    """The word after "READY " on p's first line of output (p started with stdout=PIPE, text=True)."""
    line = p.stdout.readline()
    if not line.startswith("READY "):
        raise RuntimeError("%s did not start: %r" % (what, line))
    return line.split()[1]


def fake_llm_cmd(*args):
    """The command line of tests/fakes/fake_llm.py with args. The fake answers in two send()s
    (headers, then body): with Nagle on and a delayed ACK that costs ~40 ms a request, so it runs
    with TCP_NODELAY (its handler's disable_nagle_algorithm)."""
    boot = ("import sys; sys.path.insert(0, %r); import fake_llm; "
            "fake_llm.Handler.disable_nagle_algorithm = True; fake_llm.main()" % FAKES)
    return ["/usr/bin/python3", "-u", "-c", boot, "--key", KEY, *args]


def start_fake_llm():
    """tests/fakes/fake_llm.py --instant; returns its port."""
    fake = spawn(fake_llm_cmd("--instant"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return int(ready_line(fake, "fake_llm.py"))


def llm_yaml(fake_port):
    return "providers:\n  anthropic: {api_key: %s, base_url: http://127.0.0.1:%d}\n" % (KEY, fake_port)


def start_nexo(nexo_bin, d, files, gw_port=None):
    """nexo (log level warn) with its config, data and log under d, the gateway on gw_port (None:
    a free one); returns the process once it is ready."""
    cfg = os.path.join(d, "config")
    for rel, text in files.items():
        path = os.path.join(cfg, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    sock_path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "NEXO_CONFIG")}
    env["NOTIFY_SOCKET"] = sock_path
    log = open(os.path.join(d, "log"), "w")
    p = spawn([nexo_bin, "run", "--config", cfg, "--data", os.path.join(d, "data"),
               "--listen", "127.0.0.1:%d" % (gw_port or free_port()),
               "--metrics-listen", "127.0.0.1:%d" % free_port(),
               "--admin-listen", "127.0.0.1:%d" % free_port(), "--log-level", "warn"],
              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=d)
    sock.settimeout(20)
    try:
        if b"READY=1" not in sock.recv(256):
            raise RuntimeError("nexo not ready")
    finally:
        sock.close()
    return p


def run(main, tmp):
    """main(), then every child killed and tmp removed, also on error."""
    try:
        main()
    finally:
        for c in reversed(CHILDREN):
            kill(c)
        shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def build_dir():
    return sys.argv[1] if len(sys.argv) > 1 else "build"
