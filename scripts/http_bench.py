#!/usr/bin/env python3
"""HTTP API throughput of two gitmirrord binaries (issue 11: the hand-written server against
hyper), best of 3 rounds, interleaved: GET /healthz and GET /api/status, one request per
connection, 2,000 in a row and 2,000 from 8 threads, on a one-repo index.

  scripts/http_bench.py OLD_BINARY NEW_BINARY
"""
import os, socket, subprocess, sys, tempfile, threading, time
def one(port, path="/healthz"):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    out = b""
    while True:
        b = s.recv(65536)
        if not b: break
        out += b
    s.close()
    assert out.startswith(b"HTTP/1.1 200"), out[:80]
def run(binary, port):
    d = tempfile.mkdtemp()
    os.makedirs(f"{d}/index/r/a/b"); open(f"{d}/index/r/a/b/c","w").write("url: https://example.org/x.git\n")
    open(f"{d}/c.yaml","w").write(f"listen: 127.0.0.1:0\nhttp_listen: 127.0.0.1:{port}\nstate_dir: {d}/state\nindexes: [{{name: t, url: {d}/index, poll_interval: 60s}}]\n")
    p = subprocess.Popen([binary, "--config", f"{d}/c.yaml"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.time() + 20
    while True:
        try: one(port); break
        except Exception:
            if time.time() > deadline: raise
            time.sleep(0.05)
    res = {}
    for path in ["/healthz", "/api/status"]:
        n = 2000
        t = time.perf_counter()
        for _ in range(n): one(port, path)
        res[f"seq {path}"] = n / (time.perf_counter() - t)
        def worker():
            for _ in range(250): one(port, path)
        ts = [threading.Thread(target=worker) for _ in range(8)]
        t = time.perf_counter()
        for x in ts: x.start()
        for x in ts: x.join()
        res[f"8 clients {path}"] = 2000 / (time.perf_counter() - t)
    p.terminate(); p.wait()
    return res
best = {}
for rnd in range(3):
    for name, binary, port in [("old", sys.argv[1], 18451), ("new", sys.argv[2], 18452)]:
        for k, v in run(binary, port).items():
            best[(name, k)] = max(best.get((name, k), 0), v)
for k in ["seq /healthz", "8 clients /healthz", "seq /api/status", "8 clients /api/status"]:
    print(f"{k:24} old {best[('old',k)]:8.0f} req/s   new {best[('new',k)]:8.0f} req/s")
