"""Slow-header clients against `fer-exp serve` on 127.0.0.1: how many come and go, how long each was held, how
fast /health answers meanwhile, and how much the server logged.

    python bench/slowloris.py --connections 20000 --open-at-once 1500 --seconds 120

Starts its own server (no model: /health answers "not ready", no TensorFlow) with the given --header-timeout and
--max-connections, opens up to --open-at-once connections at a time (each sends a request line and then one more
header line every --drip seconds, never finishing its headers) until --connections were opened, polls /health
every 0.5 s, and prints the figures. Loopback only; every loop is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=20000)
    ap.add_argument("--open-at-once", type=int, default=1500)
    ap.add_argument("--drip", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--header-timeout", type=float, default=10.0)
    ap.add_argument("--max-connections", type=int, default=1000)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="slowloris-"))
    log = open(work / "server.log", "w+")
    server = subprocess.Popen([sys.executable, "-m", "fer_experiments.cli", "serve", "--port", "0",
                               "--tracking-uri", f"sqlite:///{work}/mlflow.db",
                               "--header-timeout", str(args.header_timeout),
                               "--max-connections", str(args.max_connections)],
                              cwd=work, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        url = None
        for _ in range(600):
            log.seek(0)
            m = re.search(r"serving on (http://\S+)", log.read())
            if m:
                url = m.group(1)
                break
            assert server.poll() is None, "server exited"
            time.sleep(0.2)
        assert url, "server did not start"
        host, port = url.removeprefix("http://").split(":")
        log.seek(0, 2)
        start_lines = sum(1 for _ in open(work / "server.log"))
        run(args, (host, int(port)), url)
        log.flush()
        lines = open(work / "server.log").read().splitlines()[start_lines:]
        size = (work / "server.log").stat().st_size
        print(f"server log during the run: {len(lines)} lines ({size:,} bytes in all), "
              f"{sum('Traceback' in line for line in lines)} tracebacks; server alive: {server.poll() is None}")
        for line in lines[:8]:
            print("  " + line[:160])
    finally:
        server.terminate()
        server.wait(30)


def run(args: argparse.Namespace, addr: tuple[str, int], url: str) -> None:
    opened = closed = refused = got_408 = got_503 = 0
    lives: list[float] = []
    open_socks: dict[int, tuple[socket.socket, float, float]] = {}  # fd -> (socket, opened at, next drip)
    health: list[float] = []
    health_failures = 0
    next_health = 0.0
    end = time.monotonic() + args.seconds
    client = httpx.Client(timeout=10)
    poller = select.poll()  # select() cannot watch descriptors above 1023
    while time.monotonic() < end and (opened < args.connections or open_socks):
        now = time.monotonic()
        while opened < args.connections and len(open_socks) < args.open_at_once:
            try:
                s = socket.create_connection(addr, timeout=5)
                s.setblocking(False)
                s.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            except OSError:
                refused += 1
                opened += 1
                continue
            opened += 1
            open_socks[s.fileno()] = (s, now, now + args.drip)
            poller.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
        ready = [open_socks[fd][0] for fd, _ in poller.poll(50) if fd in open_socks]
        for s in ready:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            got_408 += b" 408 " in data
            got_503 += b" 503 " in data
            try:  # read to the close
                while s.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass
            poller.unregister(s)
            entry = open_socks.pop(s.fileno(), None)
            if entry:
                lives.append(time.monotonic() - entry[1])
                closed += 1
            s.close()
        now = time.monotonic()
        for fd, (s, t0, drip_at) in list(open_socks.items()):
            if drip_at <= now:
                try:
                    s.send(b"X-Slow: 1\r\n")
                    open_socks[fd] = (s, t0, now + args.drip)
                except OSError:
                    open_socks.pop(fd)
                    poller.unregister(s)
                    lives.append(now - t0)
                    closed += 1
                    s.close()
        if now >= next_health:
            next_health = now + 0.5
            t = time.monotonic()
            try:
                r = client.get(url + "/health")
                assert r.status_code in (200, 503)
                health.append(time.monotonic() - t)
            except (httpx.HTTPError, AssertionError):
                health_failures += 1
    for s, _, _ in open_socks.values():
        s.close()
    print(f"slow-header connections opened {opened:,} (refused at connect {refused:,}), closed by the server "
          f"{closed:,}, still open at the end {len(open_socks):,}; 408 answers {got_408:,}, 503 answers {got_503:,}")
    if lives:
        q = statistics.quantiles(lives, n=100)
        print(f"held for: median {statistics.median(lives):.1f} s, p99 {q[98]:.1f} s, max {max(lives):.1f} s "
              f"(--header-timeout {args.header_timeout:g} s, --max-connections {args.max_connections})")
    if health:
        q = statistics.quantiles(health, n=100) if len(health) > 1 else health * 100
        print(f"/health meanwhile: {len(health)} answers, {health_failures} failures; median "
              f"{statistics.median(health) * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, max {max(health) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
