#!/usr/bin/env python3
"""A service for laneway's HTTP sink (examples/http.toml): prints each
message it is handed and answers 200. Usage: python3 examples/http_service.py [PORT]"""
import base64, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        for m in json.loads(body):  # format = "json": an array of envelopes
            payload = m["payload"] if "payload" in m else base64.b64decode(m["payloadBase64"])
            print(m["topic"], m["messageId"], m["generateTime"], payload, flush=True)
        self.send_response(200)  # 2xx: the batch is delivered; 429/503 slow laneway down
        self.end_headers()

    def log_message(self, *args): pass  # no access log line per batch

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8080), Handler).serve_forever()
