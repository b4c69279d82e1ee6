"""A throw-away SMTP server for orch's alert tests (aiosmtpd).

Writes each received message to --dir as one file (atomically: temp name, then rename), with
an `X-Rcpt:` line of the envelope recipients first. With --cert/--key it offers (and requires)
STARTTLS; with --user/--password it requires AUTH with exactly those credentials. Prints
"ready" once listening and runs until stdin closes or it is killed.
"""
import argparse
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--dir", required=True)
p.add_argument("--cert")
p.add_argument("--key")
p.add_argument("--user")
p.add_argument("--password")
a = p.parse_args()


class Handler:
    def __init__(self):
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        path = os.path.join(a.dir, f"{time.time_ns()}-{self.n}.eml")
        with open(path + ".tmp", "wb") as f:
            f.write(("X-Rcpt: " + ", ".join(envelope.rcpt_tos) + "\r\n").encode())
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)
        return "250 OK"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == a.user
        and auth_data.password.decode() == a.password
    )
    # handled=False: let aiosmtpd answer "535" itself on failure.
    return AuthResult(success=ok, handled=False)


kw = {}
if a.cert:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(a.cert, a.key)
    kw.update(tls_context=ctx, require_starttls=True)
if a.user:
    kw.update(authenticator=authenticate, auth_required=True, auth_require_tls=bool(a.cert))

controller = Controller(Handler(), hostname="127.0.0.1", port=a.port, **kw)
controller.start()
print("ready", flush=True)
try:
    sys.stdin.read()
finally:
    controller.stop()
