#!/usr/bin/env python3
"""Slow clients: connections that send a request's headers one line at a time and never end them.

  slowloris.py HOST:PORT --sources A[,B...] --per-source N [--interval S] [--duration S]
               [--reconnect-delay S] [--once]

Each source address (127.0.0.0/8 addresses all reach a loopback server) keeps N connections
open.  A connection sends "GET /v1/imagecaches HTTP/1.1" and a Host line, then one more header
line every --interval seconds, forever.  When the server closes one, it is counted and, unless
--once, opened again after --reconnect-delay seconds.  After --duration seconds (or on SIGTERM)
prints one JSON object:
  opened            connections opened
  closed_by_server  of those, closed by the server
  refused_fast      closed by the server before their first extra header line was due
  answered          connections on which the server sent any byte (an answer)
  max_lines         the most header lines one connection had sent when the server closed it
  max_age_s         the longest a connection lived before the server closed it
  open_now          connections still open at the end
"""
import argparse
import json
import selectors
import signal
import socket
import time

REQUEST = b"GET /v1/imagecaches HTTP/1.1\r\nHost: test\r\n"


class Conn:
    def __init__(self, source, where):
        self.source = source
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((source, 0))
        self.sock.settimeout(2)
        self.sock.connect(where)
        self.sock.setblocking(False)
        self.sock.send(REQUEST)
        self.started = time.monotonic()
        self.next_line = self.started
        self.lines = 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("where")
    p.add_argument("--sources", required=True)
    p.add_argument("--per-source", type=int, required=True)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--reconnect-delay", type=float, default=0.5)
    p.add_argument("--once", action="store_true")
    a = p.parse_args()
    host, port = a.where.rsplit(":", 1)
    where = (host, int(port))
    stats = dict(opened=0, closed_by_server=0, refused_fast=0, answered=0, max_lines=0,
                 max_age_s=0.0, open_now=0, connect_errors=0)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sel = selectors.DefaultSelector()
    pending = []  # (when, source): connections to (re)open
    now = time.monotonic()
    for src in a.sources.split(","):
        pending += [(now, src)] * a.per_source
    end = now + a.duration

    def server_closed(c):
        sel.unregister(c.sock)
        c.sock.close()
        age = time.monotonic() - c.started
        stats["closed_by_server"] += 1
        stats["max_lines"] = max(stats["max_lines"], c.lines)
        stats["max_age_s"] = max(stats["max_age_s"], round(age, 3))
        if c.lines == 0 and age < a.interval:
            stats["refused_fast"] += 1
        if not a.once:
            pending.append((time.monotonic() + a.reconnect_delay, c.source))

    while not stop and time.monotonic() < end:
        now = time.monotonic()
        due = [x for x in pending if x[0] <= now]
        pending[:] = [x for x in pending if x[0] > now]
        for _, src in due:
            try:
                c = Conn(src, where)
            except OSError:
                stats["connect_errors"] += 1
                if not a.once:
                    pending.append((now + a.reconnect_delay, src))
                continue
            stats["opened"] += 1
            sel.register(c.sock, selectors.EVENT_READ, c)
        for key, _ in sel.select(timeout=0.05):
            c = key.data
            try:
                data = c.sock.recv(4096)
            except OSError:
                data = b""
            if data:
                stats["answered"] += 1
            server_closed(c)
        for key in list(sel.get_map().values()):
            c = key.data
            if time.monotonic() >= c.next_line + a.interval:
                c.next_line += a.interval
                try:
                    c.sock.send(b"X-Slow-%d: %d\r\n" % (c.lines, c.lines))
                    c.lines += 1
                except OSError:
                    server_closed(c)
        if a.once and not pending and not sel.get_map():
            break
    stats["open_now"] = len(sel.get_map())
    for key in list(sel.get_map().values()):
        key.data.sock.close()
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
