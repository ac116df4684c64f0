"""The tests' small HTTP servers (tokenserver.py, faultproxy.py) share this: a threading server on
127.0.0.1 with a free port, which is written (atomically) to a file the shell test waits for."""
import os
from http.server import ThreadingHTTPServer


def serve(handler, port_file, **attrs):
    """Serve handler until interrupted; attrs become attributes of the server (the handlers'
    shared state)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    for k, v in attrs.items():
        setattr(srv, k, v)
    with open(port_file + ".tmp", "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(port_file + ".tmp", port_file)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
