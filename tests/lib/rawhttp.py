#!/usr/bin/env python3
"""Raw HTTP/1.1 over a socket, for requests that curl will not send as they are.

  rawhttp.py request HOST:PORT REQUEST
      REQUEST (backslash escapes such as \\r\\n and \\xff are decoded) is sent as it is; prints
      the answer's status code and body on one line ("400 {...}"), or "closed" when the server
      closed the connection without an answer.
  rawhttp.py chunked [--ca FILE] [--header H]... HOST:PORT PATH CHUNK_BYTES MAX_BYTES
      POST PATH with a chunked body that never ends: chunks of CHUNK_BYTES bytes until the
      server answers, closes, or MAX_BYTES were sent.  Prints "STATUS BODY" and then
      "sent N" (the body bytes sent before the answer was seen), or "closed after N bytes" /
      "no answer after N bytes".  --ca FILE: over TLS, trusting FILE.
"""
import argparse
import codecs
import select
import socket
import ssl

TIMEOUT_S = 30


def connect(where, ca=None):
    host, port = where.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=TIMEOUT_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ca:
        ctx = ssl.create_default_context(cafile=ca)
        s = ctx.wrap_socket(s, server_hostname=host)
    return s


def recv_some(s):
    try:
        return s.recv(65536)
    except (ConnectionResetError, socket.timeout, ssl.SSLError):
        return b""


def read_answer(s):
    """(status, body) of one answer, or None when the connection closed without one."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = recv_some(s)
        if not part:
            return None
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while length is not None and len(body) < length:
        part = recv_some(s)
        if not part:
            break
        body += part
    return status, body.decode("utf-8", "backslashreplace").strip()


def cmd_request(a):
    raw = codecs.escape_decode(a.request.encode("latin-1"))[0]
    with connect(a.where) as s:
        s.sendall(raw)
        answer = read_answer(s)
    print("closed" if answer is None else "%d %s" % answer)


def answer_waiting(s):
    if isinstance(s, ssl.SSLSocket) and s.pending():
        return True
    return bool(select.select([s], [], [], 0)[0])


def cmd_chunked(a):
    chunk = b"%x\r\n" % a.chunk_bytes + b"a" * a.chunk_bytes + b"\r\n"
    head = "POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n" % a.path
    head += "".join(h + "\r\n" for h in a.header)
    head += "Transfer-Encoding: chunked\r\n\r\n"
    sent = 0
    with connect(a.where, a.ca) as s:
        s.sendall(head.encode())
        while sent < a.max_bytes and not answer_waiting(s):
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, socket.timeout, ssl.SSLError):
                break  # refused mid-body: the answer may still be there to read
            sent += a.chunk_bytes
        else:
            if sent >= a.max_bytes:
                print("no answer after %d bytes" % sent)
                return
        answer = read_answer(s)
    if answer is None:
        print("closed after %d bytes" % sent)
    else:
        print("%d %s" % answer)
        print("sent %d" % sent)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("request")
    r.add_argument("where")
    r.add_argument("request")
    c = sub.add_parser("chunked")
    c.add_argument("--ca")
    c.add_argument("--header", action="append", default=[])
    c.add_argument("where")
    c.add_argument("path")
    c.add_argument("chunk_bytes", type=int)
    c.add_argument("max_bytes", type=int)
    a = p.parse_args()
    {"request": cmd_request, "chunked": cmd_chunked}[a.cmd](a)


if __name__ == "__main__":
    main()
