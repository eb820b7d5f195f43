"""Agent-path benchmarks: gateway overhead per message at 1 client, throughput of full turns with
transcripts persisted, 10,000 concurrent streaming conversations against a slow upstream, and the
upstream request size for "hi". One JSON line per figure, each measured against a baseline in the
same run (the upstream alone). Upstreams: tests/fakes/fake_llm.py (Python, --instant) and
bench/instant_upstream.c (epoll, answers at once or streams slowly), built by bench/run.sh.
Usage: agent_bench.py BUILD_DIR. Every child process is killed at the end, also on error."""
import asyncio
import json
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

from common import KEY, build_dir, emit, fake_llm_cmd, free_port, kill, ready_line, run, spawn

build = build_dir()
NEXO = os.path.abspath(os.path.join(build, "nexo"))
UPSTREAM = os.path.abspath(os.path.join(build, "bench_instant_upstream"))
LAT_SECONDS = int(os.environ.get("BENCH_LAT_SECONDS", "3"))
TP_SECONDS = int(os.environ.get("BENCH_TP_SECONDS", "5"))
STREAMS = int(os.environ.get("BENCH_STREAMS", "10000"))
STREAM_CHUNKS = int(os.environ.get("BENCH_STREAM_CHUNKS", "5"))
STREAM_DELAY_MS = int(os.environ.get("BENCH_STREAM_DELAY_MS", "200"))
STREAM_LIMIT_S = float(os.environ.get("BENCH_STREAM_LIMIT_S", "45"))
ONLY = set(filter(None, os.environ.get("BENCH_AGENT_ONLY", "").split(",")))  # e.g. "streams,size"
TMP = tempfile.mkdtemp(prefix="nexo-agent-bench-")


def note(msg):
    print("agent_bench: " + msg, file=sys.stderr, flush=True)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_ready_line(cmd):
    """Starts a server that prints "READY <port>"; returns (proc, port)."""
    p = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return p, int(ready_line(p, cmd[0]))


def start_fake(*args):
    return start_ready_line(fake_llm_cmd(*args))


def start_upstream(*args):
    return start_ready_line([UPSTREAM, *args])


def http(method, port, path, body=None, headers=None, timeout=10):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=body, method=method,
                                 headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


class Nexo:
    """nexo on free loopback ports with a config directory written from {file: text}."""

    def __init__(self, name, files):
        self.dir = os.path.join(TMP, name)
        self.cfg = os.path.join(self.dir, "config")
        self.data = os.path.join(self.dir, "data")
        os.makedirs(self.cfg)
        for rel, text in files.items():
            with open(os.path.join(self.cfg, rel), "w") as f:
                f.write(text)

    def start(self):
        self.port = free_port()
        sock_path = os.path.join(self.dir, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        env = {k: v for k, v in os.environ.items()
               if k not in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "NEXO_CONFIG")}
        env["NOTIFY_SOCKET"] = sock_path
        self.log_path = os.path.join(self.dir, "log")
        with open(self.log_path, "w") as log:
            self.proc = spawn([NEXO, "run", "--config", self.cfg, "--data", self.data,
                               "--listen", "127.0.0.1:%d" % self.port,
                               "--metrics-listen", "127.0.0.1:%d" % free_port(),
                               "--admin-listen", "127.0.0.1:%d" % free_port(), "--log-level", "warn"],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        sock.settimeout(20)
        try:
            msg = sock.recv(256)
        finally:
            sock.close()
        if b"READY=1" not in msg:
            raise RuntimeError("nexo not ready: " + self.read_log())
        return self

    def read_log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        kill(self.proc)


def gateway_yaml():
    return ("limits: {max_connections: 12000}\nhttp_client: {max_host_connections: 12000}\n"
            "log: {level: warn}\n")


def chat_body(model, stream=False, text="hi"):
    b = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        b["stream"] = True
    return json.dumps(b, separators=(",", ":"))


# ---- wrk ----------------------------------------------------------------------------------------

WRK_LUA = r"""
local body, session = nil, nil
local counter, tid = 0, 0
local nthreads = 0
local reqs = {}
function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end
function init(args)
  body = args[1]
  session = args[2]
  nsessions = tonumber(args[3] or "1")
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer sk-fake-key"
  -- each session's request is formatted once: the load generator shares the cores it measures
  if session ~= nil and session ~= "" then
    for i = 0, nsessions - 1 do
      local h = {["X-Nexo-Session"] = string.format("%s-%d", session, i),
                 ["Content-Type"] = "application/json", ["Authorization"] = "Bearer sk-fake-key"}
      reqs[i] = wrk.format(nil, nil, h)
    end
  else
    reqs[0] = wrk.format()
  end
end
function request()
  if session == nil or session == "" then
    return reqs[0]
  end
  counter = counter + 1
  return reqs[(counter * 2 + tid) % nsessions]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,'
    .. '"p99_us":%d,"max_us":%d,"mean_us":%.1f,"non_2xx":%d,"connect_errors":%d,"read_errors":%d,'
    .. '"write_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.status, e.connect, e.read, e.write,
    e.timeout))
end
"""


def wrk(port, conns, seconds, body, session="", nsessions=1, path="/v1/chat/completions"):
    lua = os.path.join(TMP, "bench.lua")
    if not os.path.exists(lua):
        with open(lua, "w") as f:
            f.write(WRK_LUA)
    threads = 1 if conns == 1 else 2
    cmd = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % seconds, "--timeout", "5s", "-s", lua,
           "http://127.0.0.1:%d%s" % (port, path), "--", body, session, str(nsessions)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"^JSON (.*)$", out, re.M)
    if not m:
        raise RuntimeError("wrk gave no summary: " + out)
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = r["non_2xx"] + r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
    return r


def ms(us):
    return round(us / 1000.0, 3)


# ---- 1. overhead at 1 client ----------------------------------------------------------------------

def bench_overhead(gw, up_port, agent, upstream_name):
    direct_body = chat_body("gpt-4o-mini")
    wrk(up_port, 1, 1, direct_body)  # warm-up
    wrk(gw, 1, 1, chat_body(agent))
    direct = wrk(up_port, 1, LAT_SECONDS, direct_body)
    for kind, session in (("stateless", ""), ("session", "lat")):
        r = wrk(gw, 1, LAT_SECONDS, chat_body(agent), session, 256)
        d50, d99 = r["p50_us"] - direct["p50_us"], r["p99_us"] - direct["p99_us"]
        emit(bench="gateway_overhead_1_client", upstream=upstream_name, request=kind,
             requests=r["requests"], errors=r["errors"], nexo_p50_ms=ms(r["p50_us"]),
             nexo_p99_ms=ms(r["p99_us"]), direct_requests=direct["requests"],
             direct_p50_ms=ms(direct["p50_us"]), direct_p99_ms=ms(direct["p99_us"]),
             overhead_p50_ms=ms(d50), overhead_p99_ms=ms(d99), target_overhead_p50_ms=0.5,
             target_overhead_p99_ms=2, ok=d50 <= 500 and d99 <= 2000 and r["errors"] == 0)


# ---- 2. throughput --------------------------------------------------------------------------------

def persisted(n, agent, prefix, want, limit_s=10.0):
    """Messages of the bench's sessions in the store, waiting (bounded) until the store caught up."""
    db = os.path.join(n.data, "nexo.db")
    deadline = time.monotonic() + limit_s
    count, lines = 0, 0
    while True:
        con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
        try:
            count = con.execute("SELECT count(*) FROM messages WHERE session_key LIKE ?",
                                ("agent:%s:http:%s-%%" % (agent, prefix),)).fetchone()[0]
        finally:
            con.close()
        if count >= want or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    tdir = os.path.join(n.data, "transcripts", agent)
    for name in os.listdir(tdir) if os.path.isdir(tdir) else []:
        if ("%3A" + prefix + "-") in name:
            with open(os.path.join(tdir, name), "rb") as f:
                lines += f.read().count(b"\n")
    return count, lines


def bench_throughput(n, up_port, agent, upstream_name, sessions=300):
    direct = wrk(up_port, 64, TP_SECONDS, chat_body("gpt-4o-mini"))
    prefix = "tp%s" % upstream_name.replace("_", "")
    r = wrk(n.port, 64, TP_SECONDS, chat_body(agent), prefix, sessions)
    ok_requests = r["requests"] - r["non_2xx"]
    msgs, lines = persisted(n, agent, prefix, 2 * ok_requests)
    ceiling = direct["rps"]
    limit = "upstream" if r["rps"] >= 0.8 * ceiling else "nexo"
    target = min(10000.0, 0.8 * ceiling)  # 10k/s, or the upstream's own ceiling when that is lower
    emit(bench="throughput_session_turns", upstream=upstream_name, connections=64, sessions=sessions,
         seconds=TP_SECONDS, msgs_per_s=round(r["rps"]), requests=r["requests"], non_2xx=r["non_2xx"],
         errors=r["errors"], p99_ms=ms(r["p99_us"]), persisted_messages=msgs, transcript_lines=lines,
         upstream_direct_msgs_per_s=round(ceiling), upstream_direct_errors=direct["errors"],
         ratio_to_upstream=round(r["rps"] / ceiling, 3), limited_by=limit, target_msgs_per_s=round(target),
         ok=r["rps"] >= target and r["errors"] == 0 and msgs >= 2 * ok_requests)


# ---- 3. concurrent streams ------------------------------------------------------------------------

class Stream(asyncio.Protocol):
    def __init__(self, gen, req):
        self.gen, self.req = gen, req
        self.buf = bytearray()
        self.transport = None
        self.state = "connecting"
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.state = "open"

    def send(self):
        self.state = "sent"
        self.gen.inflight += 1
        self.gen.peak = max(self.gen.peak, self.gen.inflight)
        self.transport.write(self.req)

    def data_received(self, data):
        self.buf += data
        if self.buf.endswith(b"0\r\n\r\n") and b"data: [DONE]" in self.buf:
            self.finish(self.buf.startswith(b"HTTP/1.1 200"))

    def connection_lost(self, exc):
        self.finish(False)

    def finish(self, ok):
        if self.state in ("sent", "open", "connecting"):
            if self.state == "sent":
                self.gen.inflight -= 1
            self.state = "ok" if ok else "error"
            if not ok and self.gen.first_error is None:
                self.gen.first_error = bytes(self.buf[:300])
            if self.transport:
                self.transport.close()
        if not self.done.done():
            self.done.set_result(self.state == "ok")


class StreamGen:
    def __init__(self, port, count, req, pid):
        self.port, self.count, self.req, self.pid = port, count, req, pid
        self.inflight = self.peak = 0
        self.first_error = None
        self.rss_peak = 0

    async def sample_rss(self, stop):
        while not stop.is_set():
            self.rss_peak = max(self.rss_peak, rss_kb(self.pid))
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except asyncio.TimeoutError:
                pass

    async def run(self, limit_s):
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        sampler = loop.create_task(self.sample_rss(stop))
        t0 = time.monotonic()
        sem = asyncio.Semaphore(256)
        streams = []

        async def connect():
            async with sem:
                s = Stream(self, self.req)
                try:
                    await asyncio.wait_for(loop.create_connection(lambda: s, "127.0.0.1", self.port), 10)
                except (OSError, asyncio.TimeoutError):
                    s.finish(False)
                return s

        streams = await asyncio.gather(*(connect() for _ in range(self.count)))
        t_conn = time.monotonic() - t0
        for s in streams:  # every connection is open: send all requests at once
            if s.state == "open":
                s.send()
        t1 = time.monotonic()
        pending = [s.done for s in streams if not s.done.done()]
        if pending:
            await asyncio.wait(pending, timeout=max(1.0, limit_s - (t1 - t0)))
        elapsed = time.monotonic() - t1
        ok = sum(1 for s in streams if s.state == "ok")
        errors = sum(1 for s in streams if s.state == "error")
        for s in streams:
            if s.transport and not s.transport.is_closing():
                s.transport.abort()
        stop.set()
        await sampler
        return {"completed": ok, "errors": errors, "unfinished": self.count - ok - errors,
                "connect_s": round(t_conn, 2), "stream_s": round(elapsed, 2), "peak_inflight": self.peak}


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nofile_limit(pid):
    with open("/proc/%d/limits" % pid) as f:
        m = re.search(r"Max open files\s+(\d+)", f.read())
    return int(m.group(1)) if m else 0


def settle_rss(pid, seconds):
    """RSS after a settle: sampled until it stops falling (bounded by seconds)."""
    deadline = time.monotonic() + seconds
    last = rss_kb(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        cur = rss_kb(pid)
        if cur >= last:
            return cur
        last = cur
    return last


def bench_streams():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * STREAMS + 1024  # nexo holds a client and an upstream connection per stream
    if hard < want:
        try:  # root may raise the hard limit (up to fs.nr_open); nexo inherits it
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            soft = hard = want
        except (ValueError, OSError):
            note("open-file hard limit %d: some of %d streams may fail for want of descriptors" % (hard, STREAMS))
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    count = min(STREAMS, hard - 200)
    up, up_port = start_upstream("--chunks", str(STREAM_CHUNKS), "--chunk-delay-ms", str(STREAM_DELAY_MS))
    n = Nexo("streams", {
        "gateway.yaml": gateway_yaml(),
        "llm.yaml": "providers:\n  slow: {kind: openai, api_key: %s, base_url: http://127.0.0.1:%d/v1}\n"
                    % (KEY, up_port),
        "agents.yaml": "agents:\n  - id: stream\n    model: {provider: slow, model: gpt-4o-mini}\n",
    }).start()
    try:
        # idle: one streamed turn first (loads libcurl, warms the store), then settle
        body = chat_body("stream", stream=True).encode()
        http("POST", n.port, "/v1/chat/completions", body, {"Content-Type": "application/json"}, 30)
        idle = settle_rss(n.proc.pid, 3.0)
        req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        gen = StreamGen(n.port, count, req, n.proc.pid)
        cpu0 = cpu_s(n.proc.pid)
        r = asyncio.run(gen.run(STREAM_LIMIT_S))
        cpu = cpu_s(n.proc.pid) - cpu0
        _, stats = http("GET", up_port, "/_stats")
        stats = json.loads(stats)
        after = settle_rss(n.proc.pid, 5.0)
        if gen.first_error:
            note("first failed stream: %r" % gen.first_error)
        emit(bench="concurrent_streams", streams=count, upstream_chunks=STREAM_CHUNKS,
             upstream_chunk_delay_ms=STREAM_DELAY_MS, time_limit_s=STREAM_LIMIT_S, **r,
             upstream_peak_streams=stats["peak_streams"], upstream_peak_conns=stats["peak_conns"],
             rss_idle_kb=idle, rss_peak_kb=gen.rss_peak, rss_after_kb=after,
             rss_after_vs_idle=round(after / idle, 3), nexo_cpu_s=round(cpu, 2),
             nexo_open_files_limit=nofile_limit(n.proc.pid), target_streams=10000, target_rss_peak_kb=204800,
             target_rss_after_vs_idle=1.1,
             ok=(r["completed"] == count >= 10000 and gen.rss_peak <= 204800 and after <= idle * 1.1))
    finally:
        n.stop()
        kill(up)


# ---- 4. upstream request size -----------------------------------------------------------------------

def bench_request_size():
    for kind in ("anthropic", "openai"):
        fake, fport = start_fake()
        base = "http://127.0.0.1:%d%s" % (fport, "/v1" if kind == "openai" else "")
        n = Nexo("size-" + kind, {  # no agents.yaml: the embedded default agent "main"
            "gateway.yaml": gateway_yaml(),
            "llm.yaml": "providers:\n  %s: {api_key: %s, base_url: %s}\n" % (kind, KEY, base),
        }).start()
        try:
            status, _ = http("POST", n.port, "/v1/chat/completions", chat_body("main").encode(),
                             {"Content-Type": "application/json"}, 30)
            _, recs = http("GET", fport, "/_requests")
            rec = json.loads(recs)[-1]
            body = int(rec["headers"].get("content-length", 0))
            head = len("%s %s HTTP/1.1\r\n" % (rec["method"], rec["path"])) + 2
            head += sum(len(k) + len(v) + 4 for k, v in rec["headers"].items())
            total = head + body
            emit(bench="upstream_request_bytes_hi", provider_kind=kind, status=status, body_bytes=body,
                 header_bytes=head, total_bytes=total, target_bytes=4096,
                 ok=status == 200 and total <= 4096)
        finally:
            n.stop()
            kill(fake)


# ---- main ---------------------------------------------------------------------------------------------

def main():
    if not ONLY or ONLY & {"overhead", "throughput"}:
        bench_turns()
    if not ONLY or "size" in ONLY:
        bench_request_size()
    if not ONLY or "streams" in ONLY:
        bench_streams()


def bench_turns():
    fake, fport = start_fake("--instant")
    up, uport = start_upstream()
    n = Nexo("turns", {
        "gateway.yaml": gateway_yaml(),
        "llm.yaml": ("providers:\n"
                     "  fake: {kind: openai, api_key: %s, base_url: http://127.0.0.1:%d/v1}\n"
                     "  instant: {kind: openai, api_key: %s, base_url: http://127.0.0.1:%d/v1}\n")
                    % (KEY, fport, KEY, uport),
        "agents.yaml": ("agents:\n"
                        "  - id: viafake\n    model: {provider: fake, model: gpt-4o-mini}\n"
                        "  - id: viainstant\n    model: {provider: instant, model: gpt-4o-mini}\n"),
    }).start()
    try:
        if not ONLY or "overhead" in ONLY:
            bench_overhead(n.port, fport, "viafake", "python_fake")
            bench_overhead(n.port, uport, "viainstant", "c_instant")
        if not ONLY or "throughput" in ONLY:
            bench_throughput(n, fport, "viafake", "python_fake")
            bench_throughput(n, uport, "viainstant", "c_instant")
    finally:
        n.stop()
        kill(up)
        kill(fake)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run(main, TMP)
