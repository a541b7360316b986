"""Upstream servers on the host's loopback for the egress tests: an HTTP(S) server that answers
what it was asked, and a TCP echo server."""

from __future__ import annotations

import socketserver
import ssl
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from .helpers import serving


class Answer(BaseHTTPRequestHandler):
    """Answers ``METHOD PATH host=HOST body=BODY``; /big/N answers N bytes; a request to upgrade
    gets 101 and an echo of what follows."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        if self.headers.get("Upgrade"):  # switch to echoing bytes, as a websocket would carry them
            self.send_response(101)
            self.send_header("Upgrade", self.headers["Upgrade"])
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while data := self.rfile.read1(65536):
                self.wfile.write(data)
                self.wfile.flush()
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(length)
        if self.path.startswith("/big/"):
            data = b"x" * int(self.path[5:])
        else:
            data = f"{self.command} {self.path} host={self.headers['Host']} body={body.decode()}".encode()
            if "Authorization" in self.headers:
                data += f" auth={self.headers['Authorization']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def http_server(tls: ssl.SSLContext | None = None) -> AbstractContextManager[int]:
    """An HTTP server on 127.0.0.1 (HTTPS with a TLS context); its port."""
    return serving(Answer, tls)


@dataclass
class Echo:
    port: int
    open: int = 0  # connections now open


@contextmanager
def echo_server() -> Iterator[Echo]:
    """A TCP server on 127.0.0.1 that sends back what it receives."""
    lock = threading.Lock()

    class EchoBack(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with lock:
                server.open += 1
            try:
                while data := self.request.recv(65536):
                    self.request.sendall(data)
            except OSError:
                pass
            finally:
                with lock:
                    server.open -= 1

    with serving(EchoBack) as port:
        server = Echo(port)
        yield server
