"""A server process for one configuration under test: naiad by default, any Triton-compatible
command with ``--server-command``, on free loopback ports, stopped by its PID."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


class ServerError(Exception):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, repository: str, model: str, command: str = "", flags: list[str] = (),
                 log_path: str = "", startup_timeout: float = 120.0):
        self.repository = repository
        self.model = model
        self.command = shlex.split(command) if command else [sys.executable, "-m", "naiad"]
        self.flags = list(flags)
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None

    def _args(self) -> list[str]:
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.http_port, self.grpc_port, self.metrics_port = sorted(ports)
        return self.command + [
            f"--model-repository={self.repository}",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}", "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1", *self.flags]

    def url(self, protocol: str) -> str:
        return f"127.0.0.1:{self.grpc_port if protocol == 'grpc' else self.http_port}"

    def _ready(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/v2/models/{self.model}/ready"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> ServerProcess:
        for _ in range(3):  # a port picked free may be taken before the server binds it
            if not self.log_path:
                fd, self.log_path = tempfile.mkstemp(prefix="naiad-analyze-", suffix=".log")
                os.close(fd)
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(self._args(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
            log.close()
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if self._ready():
                    return self
                time.sleep(0.1)
            tail = self.log_tail()
            self.stop()
            if "unable to bind" in tail or "Address already in use" in tail:
                continue
            raise ServerError(f"the server did not get '{self.model}' ready:\n{tail}")
        raise ServerError(f"the server could not bind its ports:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
