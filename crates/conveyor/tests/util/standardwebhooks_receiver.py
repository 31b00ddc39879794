"""A webhook receiver that verifies every call with the Standard Webhooks reference library
(`standardwebhooks` from PyPI, installed by scripts/python-tools.sh), as a user's receiver would.

RECEIVER_SECRETS is a JSON object {name: "whsec_..."}: each call is verified with each secret
alone (a receiver holding only that secret), now and as a replay 6 minutes later (beyond the
library's 5-minute tolerance). Paths:
  POST /hook    204 when every secret verifies it, else 401
  POST /hook?flaky  503 the first time a webhook-id comes, then as /hook
  POST /reject  400 (whatever the query), echoing the request's other headers (not Conveyor-*,
                webhook-*, ...) in the body, as a careless receiver might
  GET  /calls   what was received, as JSON
Prints "listening <port>" once it listens on 127.0.0.1 (port 0: any free one).
"""
import json
import os
import sys
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import standardwebhooks.webhooks as swh
from standardwebhooks import Webhook

SECRETS = json.loads(os.environ["RECEIVER_SECRETS"])
CALLS = []
FLAKY_SEEN = set()
LOCK = threading.Lock()
REAL_DATETIME = swh.datetime


class SixMinutesLater(REAL_DATETIME):
    @classmethod
    def now(cls, tz=None):
        return REAL_DATETIME.now(tz) + timedelta(minutes=6)


def verify(secret, body, headers, later=False):
    # one at a time: the replay check swaps the library's clock
    with LOCK:
        swh.datetime = SixMinutesLater if later else REAL_DATETIME
        try:
            Webhook(secret).verify(body, headers, json_parse=False)
            return "ok"
        except Exception as e:  # the library's refusal, named
            return f"{type(e).__name__}: {e}"
        finally:
            swh.datetime = REAL_DATETIME


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        results = {n: verify(s, body, headers) for n, s in SECRETS.items()}
        replayed = {n: verify(s, body, headers, later=True) for n, s in SECRETS.items()}
        with LOCK:
            CALLS.append({"path": self.path, "headers": headers, "body": body.decode("utf-8", "replace"),
                          "verified": results, "replayed_6_min_later": replayed})
        if self.path.split("?")[0] == "/reject":
            # the headers that are not conveyor's own, as a receiver's error might show them
            # (authorization included: a URL's user info arrives as Basic credentials, and a
            # receiver that echoes it must not put the password into the dead letter)
            own = ("conveyor-", "webhook-", "content-", "accept", "host")
            mine = {k: v for k, v in headers.items() if not k.startswith(own)}
            out = json.dumps({"refused": True, "path": self.path, "you_sent": mine}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        ok = all(r == "ok" for r in results.values())
        if self.path == "/hook?flaky":
            with LOCK:
                first = headers.get("webhook-id") not in FLAKY_SEEN
                FLAKY_SEEN.add(headers.get("webhook-id"))
            if first:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(204 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        with LOCK:
            out = json.dumps(CALLS).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"listening {server.server_address[1]}", flush=True)
# stops when the test closes stdin (or is killed)
threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
server.serve_forever()
