#!/usr/bin/env python3
"""Raw HTTP/1.1 over a socket, for requests that curl will not send as they are.

  rawhttp.py request HOST:PORT REQUEST
      REQUEST (backslash escapes such as \\r\\n and \\xff are decoded) is sent as it is; prints
      the answer's status code and body on one line ("400 {...}"), or "closed" when the server
      closed the connection without an answer.
"""
import codecs
import socket
import sys

TIMEOUT_S = 30


def connect(where):
    host, port = where.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=TIMEOUT_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_answer(s):
    """(status, body) of one answer, or None when the connection closed without one."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            part = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            part = b""
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
        try:
            part = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not part:
            break
        body += part
    return status, body.decode("utf-8", "backslashreplace").strip()


def cmd_request(where, request):
    raw = codecs.escape_decode(request.encode("latin-1"))[0]
    with connect(where) as s:
        s.sendall(raw)
        answer = read_answer(s)
    print("closed" if answer is None else "%d %s" % answer)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "request":
        cmd_request(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
