"""Spine benchmarks: launch-to-ready, idle RSS, stripped binary size, /healthz throughput and p99
at 1 and 64 keep-alive connections (wrk). Each figure is printed as a JSON line with its target
and, where one exists, the same figure for a bare libh2o server measured in the same run."""
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

build = sys.argv[1] if len(sys.argv) > 1 else "build"
NEXO = os.path.abspath(os.path.join(build, "nexo"))
BASELINE = os.path.abspath(os.path.join(build, "bench_baseline_h2o"))
RUNS = int(os.environ.get("BENCH_RUNS", "20"))
WRK_SECONDS = os.environ.get("BENCH_WRK_SECONDS", "5")


def emit(**kw):
    print(json.dumps(kw), flush=True)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Nexo:
    def __init__(self, data):
        self.tmp = tempfile.mkdtemp(prefix="nexo-bench-")
        self.sock_path = os.path.join(self.tmp, "notify")
        self.data = data

    def start(self):
        self.gw_port, mport, aport = free_port(), free_port(), free_port()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        env = dict(os.environ, NOTIFY_SOCKET=self.sock_path)
        self.log = open(os.path.join(self.tmp, "log"), "w+")
        t0 = time.monotonic_ns()
        self.proc = subprocess.Popen(
            [NEXO, "run", "--data", self.data, "--listen", "127.0.0.1:%d" % self.gw_port,
             "--metrics-listen", "127.0.0.1:%d" % mport, "--admin-listen", "127.0.0.1:%d" % aport,
             "--log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp)
        self.sock.settimeout(20)
        msg = self.sock.recv(256)
        self.ready_ms = (time.monotonic_ns() - t0) / 1e6
        assert b"READY=1" in msg
        return self

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.sock.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def spawn_floor_ms():
    t = []
    for _ in range(RUNS):
        t0 = time.monotonic_ns()
        subprocess.run(["/bin/true"])
        t.append((time.monotonic_ns() - t0) / 1e6)
    return statistics.median(t)


def bench_ready():
    data_root = tempfile.mkdtemp(prefix="nexo-bench-data-")
    cold, warm = [], []
    for i in range(RUNS):
        d = os.path.join(data_root, "cold%d" % i)
        n = Nexo(d).start()
        cold.append(n.ready_ms)
        n.stop()
        n = Nexo(d).start()
        warm.append(n.ready_ms)
        n.stop()
    shutil.rmtree(data_root, ignore_errors=True)
    floor = spawn_floor_ms()
    emit(bench="launch_to_ready_ms", existing_data_dir=round(statistics.median(warm), 2),
         new_data_dir=round(statistics.median(cold), 2),
         p90_existing=round(sorted(warm)[int(len(warm) * 0.9) - 1], 2), runs=RUNS,
         baseline_spawn_true_ms=round(floor, 2), target_ms=10,
         ok=statistics.median(warm) <= 10)


def wrk(port, conns):
    threads = 1 if conns == 1 else 2
    out = subprocess.run(["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ss" % WRK_SECONDS,
                          "--latency", "http://127.0.0.1:%d/healthz" % port],
                         capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, float(p99.group(1)) * scale, int(errors.group(1)) if errors else 0


def main():
    # Binary size, stripped.
    tmp = tempfile.mkdtemp(prefix="nexo-bench-")
    stripped = os.path.join(tmp, "nexo")
    subprocess.run(["strip", "-o", stripped, NEXO], check=True)
    size = os.path.getsize(stripped)
    emit(bench="stripped_binary_bytes", bytes=size, target_bytes=1048576, ok=size <= 1048576)
    shutil.rmtree(tmp)

    bench_ready()

    data = tempfile.mkdtemp(prefix="nexo-bench-data-")
    n = Nexo(os.path.join(data, "d")).start()
    base = subprocess.Popen([BASELINE, "0"], stdout=subprocess.PIPE, text=True)
    base_port = int(base.stdout.readline().split()[1])
    try:
        time.sleep(1.0)  # idle: let start-up allocations settle before reading RSS
        rss = rss_kb(n.proc.pid)
        base_rss = rss_kb(base.pid)
        emit(bench="idle_rss_kb", rss_kb=rss, baseline_h2o_rss_kb=base_rss,
             ratio=round(rss / base_rss, 2), target_kb=4096, ok=rss <= 4096)
        gw_port = n.gw_port
        for conns in (1, 64):
            rps, p99, errs = wrk(gw_port, conns)
            brps, bp99, _ = wrk(base_port, conns)
            emit(bench="healthz", connections=conns, rps=round(rps), p99_ms=round(p99, 3),
                 non_2xx=errs, baseline_h2o_rps=round(brps), baseline_h2o_p99_ms=round(bp99, 3),
                 ratio=round(rps / brps, 2),
                 target_rps=50000 if conns == 64 else None,
                 ok=(rps >= 50000) if conns == 64 else None)
        emit(bench="rss_after_load_kb", rss_kb=rss_kb(n.proc.pid))
    finally:
        base.terminate()
        base.wait()
        n.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
