#!/usr/bin/env python3
"""An HTTP proxy in front of a test registry that breaks blob downloads for real.

Every request is forwarded to --upstream as is (method, path, Authorization, Range, Accept).
For GET .../blobs/sha256:... the --mode applies:
  cut:N     the first answer for each blob sends its headers and N bytes of the body, then the
            connection is dropped (the client sees a short body and must resume)
  status:C  the first request for each blob is answered with HTTP C and Retry-After: 1
  corrupt   every blob body of more than 64 KiB (a layer, not a config) has one byte flipped
            in its middle
Each request is logged to --log as "METHOD PATH RANGE ACTION".
"""
import argparse
import http.client
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler

import loopserver

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def note(self, action):
        with self.server.lock, open(self.server.args.log, "a") as f:
            f.write("%s %s %s %s\n" % (self.command, self.path,
                                       self.headers.get("Range", "-").replace(" ", ""), action))

    def first_time(self):
        with self.server.lock:
            if self.path in self.server.seen:
                return False
            self.server.seen.add(self.path)
            return True

    def forward(self):
        mode = self.server.args.mode
        is_blob = self.command == "GET" and "/blobs/sha256:" in self.path
        if is_blob and mode.startswith("status:") and self.first_time():
            code = int(mode.split(":")[1])
            body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}'
            self.send_response(code)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.note("status-%d" % code)
            return
        n = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(n) if n else None
        up = http.client.HTTPConnection(self.server.args.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        up.request(self.command, self.path, body=body, headers=headers)
        resp = up.getresponse()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.end_headers()
        cut = -1
        if is_blob and resp.status == 200 and mode.startswith("cut:") and self.first_time():
            cut = int(mode.split(":")[1])
        length = int(resp.getheader("Content-Length", "0") or 0)
        sent = 0
        while self.command != "HEAD":
            chunk = resp.read(65536)
            if not chunk:
                break
            if (is_blob and mode == "corrupt" and length > 65536 and
                    sent <= length // 2 < sent + len(chunk)):
                i = length // 2 - sent
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
            if cut >= 0 and sent + len(chunk) >= cut:
                self.wfile.write(chunk[:cut - sent])
                self.wfile.flush()
                self.note("cut-after-%d" % cut)
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                up.close()
                return
            self.wfile.write(chunk)
            sent += len(chunk)
        up.close()
        self.note("corrupt" if is_blob and mode == "corrupt" else "forward-%d" % resp.status)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = forward


def main():
    p = argparse.ArgumentParser()
    for opt in ("--upstream", "--mode", "--log", "--port-file"):
        p.add_argument(opt, required=True)
    args = p.parse_args()
    return loopserver.serve(Handler, args.port_file, args=args, seen=set(),
                            lock=threading.Lock())


if __name__ == "__main__":
    sys.exit(main())
