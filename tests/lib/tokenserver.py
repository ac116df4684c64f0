#!/usr/bin/env python3
"""A small token server for docker-registry's "token" auth, for imcache's tests.

GET /token?service=S&scope=repository:NAME:ACTIONS (basic auth with a user of --users) and
POST /token (OAuth2 form, grant_type=refresh_token with --identity-token, or grant_type=password)
answer {"token", "access_token", "expires_in", "issued_at"}: a JWT signed RS256 with --key, its
certificate (--cert, the registry's rootcertbundle) in the x5c header, granting every action
asked for.  The first --expire-first pull-only tokens granted are born expired (an hour ago, beyond the
registry's leeway for clock skew), so that a client must take the registry's 401 and come back
for a new one.  Anonymous requests and wrong passwords get 401.  Each request is logged to --log as
"METHOD USER SCOPE STATUS".  Signing uses the openssl command: only the standard library here.
"""
import argparse
import base64
import json
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

import loopserver


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    def __init__(self, key, cert):
        self.key = key
        der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()

    def sign(self, claims):
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                         b64url(json.dumps(claims, separators=(",", ":")).encode()))
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key],
                             input=signing_input.encode(), check=True,
                             capture_output=True).stdout
        return signing_input + "." + b64url(sig)


def parse_scopes(scopes):
    access = []
    for scope in scopes:
        for one in scope.split(" "):
            parts = one.split(":")
            if len(parts) < 3:
                continue
            access.append({"type": parts[0], "name": ":".join(parts[1:-1]),
                           "actions": parts[-1].split(",")})
    return access


class Handler(BaseHTTPRequestHandler):
    server_version = "imcache-test-token/1"

    def log_message(self, fmt, *args):
        pass

    def note(self, user, scopes, status):
        with self.server.log_lock, open(self.server.args.log, "a") as f:
            f.write("%s %s %s %d\n" % (self.command, user or "-", ",".join(scopes) or "-",
                                       status))

    def reply(self, status, body, user, scopes):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.note(user, scopes, status)

    def basic_user(self):
        h = self.headers.get("Authorization", "")
        if not h.lower().startswith("basic "):
            return None, False
        try:
            user, _, password = base64.b64decode(h[6:].strip()).decode().partition(":")
        except ValueError:
            return None, False
        return user, self.server.users.get(user) == password

    def grant(self, user, service, scopes, oauth):
        args = self.server.args
        now = int(time.time())
        exp = now + args.lifetime
        pull_only = all("push" not in sc for sc in scopes)
        with self.server.log_lock:
            if self.server.expire_left > 0 and pull_only:
                self.server.expire_left -= 1
                exp = now - 3600
        claims = {"iss": args.issuer, "sub": user, "aud": service, "exp": exp,
                  "nbf": now - 7200, "iat": now - 7200, "jti": uuid.uuid4().hex,
                  "access": parse_scopes(scopes)}
        token = self.server.signer.sign(claims)
        body = {"access_token": token, "expires_in": args.lifetime,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
        if not oauth:
            body["token"] = token
        self.reply(200, body, user, scopes)

    def do_GET(self):
        url = urlparse(self.path)
        q = parse_qs(url.query)
        scopes = q.get("scope", [])
        if url.path != "/token":
            return self.reply(404, {"error": "not found"}, None, scopes)
        user, ok = self.basic_user()
        if not ok:
            return self.reply(401, {"errors": [{"code": "UNAUTHORIZED",
                                                "message": "authentication required"}]},
                              user, scopes)
        self.grant(user, q.get("service", [""])[0], scopes, False)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        if n > 65536:
            return self.reply(413, {"error": "too large"}, None, [])
        form = parse_qs(self.rfile.read(n).decode())
        scopes = form.get("scope", [])
        grant = form.get("grant_type", [""])[0]
        ident = self.server.args.identity_token
        if grant == "refresh_token" and ident and form.get("refresh_token", [""])[0] == ident:
            return self.grant("identity", form.get("service", [""])[0], scopes, True)
        if grant == "password":
            user = form.get("username", [""])[0]
            if self.server.users.get(user) == form.get("password", [None])[0]:
                return self.grant(user, form.get("service", [""])[0], scopes, True)
        self.reply(401, {"error": "invalid_grant"}, None, scopes)


def main():
    p = argparse.ArgumentParser()
    for opt in ("--key", "--cert", "--users", "--service", "--issuer", "--log", "--port-file"):
        p.add_argument(opt, required=True)
    p.add_argument("--identity-token", default="")
    p.add_argument("--lifetime", type=int, default=300)
    p.add_argument("--expire-first", type=int, default=0)
    args = p.parse_args()
    users = {}
    with open(args.users) as f:
        for line in f:
            user, sep, password = line.rstrip("\n").partition(":")
            if sep:
                users[user] = password
    return loopserver.serve(Handler, args.port_file, args=args, users=users,
                            signer=Signer(args.key, args.cert), log_lock=threading.Lock(),
                            expire_left=args.expire_first)


if __name__ == "__main__":
    sys.exit(main())
