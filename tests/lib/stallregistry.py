#!/usr/bin/env python3
"""A misbehaving OCI registry for tests, on 127.0.0.1.  Every repository serves one small image
of its own (one gzip layer holding /hello with the repository's name and /noise, 4 KiB that
do not compress, so no two repositories share a layer and a trickled layer takes long), at any
tag.  How it answers depends on the repository's first component:

  stall/...    every request is read and never answered (the connection stays open)
  trickle/...  manifests and configs at once; the layer's headers at once, then its body
               --trickle-bytes bytes every --trickle-interval seconds
  redirect/... the layer's GET answers 307 to --redirect-host (default localhost: another host
               than 127.0.0.1, over plain HTTP) at this server's port, where it is served
  moved/...    the layer's GET answers 307 to the same host (127.0.0.1), where it is served
  anything     answered at once

A repository whose last component starts with "shared" has the same layer as every other such
repository (one layer digest, as two tenants' images on one base layer; the configs differ); one whose last
component starts with "huge" declares its layer as --huge-bytes bytes
in the manifest (default 160 MiB; the body stays the real one, and a trickled one is sent with
the declared Content-Length, as a real registry would, so it is never seen as short before it
ends), so that the builder sizes its filesystem from a large image (a layer declared larger than
a cap is refused before it is asked for: the log shows no GET of it).  GET /v2/ answers 200.  Each request is logged to --log as "METHOD PATH ACTION"; a trickled
body logs "trickle-start PATH" and, when the client goes away before the end,
"trickle-gone PATH".
"""
import argparse
import gzip
import hashlib
import io
import json
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler

import loopserver

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def make_image(repo, declared=None, layer_of=None):
    """(manifest bytes, {digest: blob bytes}, layer digest) of repo's image; declared: the layer
    size the manifest says (None: the real one); layer_of: whose layer it has (None: its own)."""
    config_repo, repo = repo, layer_of or repo
    raw = io.BytesIO()
    noise = b"".join(hashlib.sha256(b"%s %d" % (repo.encode(), i)).digest() for i in range(128))
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in (("hello", ("image of %s\n" % repo).encode()), ("noise", noise)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            t.addfile(info, io.BytesIO(data))
    tar = raw.getvalue()
    layer = gzip.compress(tar, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/hello"], "Labels": {"repo": config_repo}},
                         "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                           "config": {"mediaType": MT_CONFIG, "digest": sha256(config),
                                      "size": len(config)},
                           "layers": [{"mediaType": MT_LAYER, "digest": sha256(layer),
                                       "size": declared or len(layer)}]}).encode()
    return manifest, {sha256(config): config, sha256(layer): layer}, sha256(layer)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def note(self, action):
        with self.server.lock, open(self.server.args.log, "a") as f:
            f.write("%s %s %s\n" % (self.command, self.path, action))

    def image(self, repo):
        with self.server.lock:
            if repo not in self.server.images:
                last = repo.split("/")[-1]
                huge = last.startswith("huge")
                self.server.images[repo] = make_image(
                    repo, self.server.args.huge_bytes if huge else None,
                    "shared" if last.startswith("shared") else None)
            return self.server.images[repo]

    def send(self, code, body, ctype="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if ctype == MT_MANIFEST:
            self.send_header("Docker-Content-Digest", sha256(body))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def stall(self):
        self.note("stall")
        # Hold the connection until the client gives up (or the server is stopped).
        while True:
            time.sleep(3600)

    def trickle(self, body, declared=None):
        a = self.server.args
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(declared or len(body)))
        self.end_headers()
        self.note("trickle-start")
        try:
            for i in range(0, len(body), a.trickle_bytes):
                self.wfile.write(body[i:i + a.trickle_bytes])
                self.wfile.flush()
                time.sleep(a.trickle_interval)
        except OSError:
            self.note("trickle-gone")
            self.close_connection = True
            return
        self.note("trickle-end")

    def redirect(self, host):
        port = self.server.server_address[1]
        self.send_response(307)
        self.send_header("Location", "http://%s:%d%s?moved=1" % (host, port, self.path))
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.note("redirect %s" % host)

    def serve(self):
        parts = self.path.split("?")[0].split("/")
        moved = "moved=1" in self.path.partition("?")[2]
        if self.path.split("?")[0] in ("/v2", "/v2/"):
            return self.send(200, b"{}")
        # /v2/<repo...>/manifests/<ref> or /v2/<repo...>/blobs/<digest>
        if len(parts) < 5 or parts[1] != "v2" or parts[-2] not in ("manifests", "blobs"):
            return self.send(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}')
        repo, kind, ref = "/".join(parts[2:-2]), parts[-2], parts[-1]
        if parts[2] == "stall":
            return self.stall()
        manifest, blobs, layer = self.image(repo)
        if kind == "manifests":
            self.note("manifest")
            return self.send(200, manifest, MT_MANIFEST)
        if ref not in blobs:
            return self.send(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}')
        if parts[2] == "trickle" and ref == layer and self.command == "GET":
            huge = repo.split("/")[-1].startswith("huge")
            return self.trickle(blobs[ref], self.server.args.huge_bytes if huge else None)
        if parts[2] in ("redirect", "moved") and ref == layer and not moved:
            return self.redirect(self.server.args.redirect_host if parts[2] == "redirect"
                                 else "127.0.0.1")
        self.note("blob")
        return self.send(200, blobs[ref], "application/octet-stream")

    do_GET = do_HEAD = serve


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--log", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--trickle-bytes", type=int, default=8)
    p.add_argument("--trickle-interval", type=float, default=3.0)
    p.add_argument("--huge-bytes", type=int, default=160 << 20)
    p.add_argument("--redirect-host", default="localhost")
    args = p.parse_args()
    return loopserver.serve(Handler, args.port_file, args=args, images={},
                            lock=threading.Lock())


if __name__ == "__main__":
    sys.exit(main())
