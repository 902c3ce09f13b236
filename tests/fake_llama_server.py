#!/usr/bin/env python3
"""A stand-in for llama-server where no GPU is: takes its command line, answers /health,
/slots and /metrics like an idle server with ``-np`` slots, and exits on SIGTERM.

Tests that start fleets planned for GPU boxes (which a CPU build of llama-server cannot load)
run it as their llama-server, so that the workers' real command lines can be read back from
the running processes. Everything else uses the real llama-server. ``--version`` and ``--help``
are answered by the real one named in ``$FAKE_LLAMA_SERVER_REAL`` (the launcher probes them).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def option(argv: list[str], flag: str, default: str) -> str:
    return argv[argv.index(flag) + 1] if flag in argv else default


def main(argv: list[str]) -> None:
    if {"--version", "--help"} & set(argv):
        real = os.environ["FAKE_LLAMA_SERVER_REAL"]
        os.execv(real, [real, *argv])
    host = option(argv, "--host", "127.0.0.1")
    port = int(option(argv, "--port", "8080"))
    slots = int(option(argv, "-np", "1"))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                body, kind = json.dumps({"status": "ok"}), "application/json"
            elif self.path == "/slots":
                idle = [{"id": i, "id_task": -1, "is_processing": False} for i in range(slots)]
                body, kind = json.dumps(idle), "application/json"
            elif self.path == "/metrics":
                body, kind = "llamacpp:tokens_predicted_total 0\n", "text/plain"
            else:
                self.send_error(404)
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"fake llama-server listening on {host}:{port} with {slots} slots", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
