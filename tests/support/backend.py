#!/usr/bin/env python3
"""Test HTTP backend for deploy tests.

Listens on 127.0.0.1:$PORT, answers every request with "$ORCH_RELEASE\n"
(HTTP/1.1 keep-alive), except:
  GET /headers                       -> the request's headers as a JSON object (lower-case names)
  GET /big?n=N                       -> N bytes ("0123456789" repeated), Content-Length
  POST (any path)                    -> the request body (Content-Length) echoed back
  Connection: upgrade, Upgrade: echo -> 101 Switching Protocols, then echoes raw bytes until EOF
Controlled by files in the directory given as argv[1]:
  fail-health-<release>  -> GET /health answers 500
  crash-<release>        -> the process exits 1 (checked every 20 ms)
On SIGTERM it closes every open connection abruptly (as many real servers do) and exits 0.
"""
import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTROL = sys.argv[1]
RELEASE = os.environ.get("ORCH_RELEASE", "?")
PORT = int(os.environ["PORT"])
conns = set()
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with lock:
            conns.add(self.connection)

    def finish(self):
        with lock:
            conns.discard(self.connection)
        super().finish()

    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "echo":
            self.send_response(101)
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "echo")
            self.end_headers()
            self.wfile.flush()
            while True:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                self.connection.sendall(chunk)
            self.close_connection = True
            return
        if self.path.startswith("/big?n="):
            n = int(self.path.split("=", 1)[1])
            body = (b"0123456789" * (n // 10 + 1))[:n]
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path == "/headers":
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path == "/health" and os.path.exists(os.path.join(CONTROL, "fail-health-" + RELEASE)):
            body, code = b"unhealthy\n", 500
        else:
            body, code = (RELEASE + "\n").encode(), 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Release", RELEASE)
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


server = Server(("127.0.0.1", PORT), Handler)


def abrupt_exit(*_):
    with lock:
        for c in list(conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
    os._exit(0)


def watch_crash():
    flag = os.path.join(CONTROL, "crash-" + RELEASE)
    while True:
        if os.path.exists(flag):
            os._exit(1)
        threading.Event().wait(0.02)


signal.signal(signal.SIGTERM, abrupt_exit)
threading.Thread(target=watch_crash, daemon=True).start()
print(f"release {RELEASE} listening on {PORT}", flush=True)
server.serve_forever()
