"""Shared test fixtures: free ports, model repositories, real server processes.

Servers bind 127.0.0.1 on ports picked free by the test; each is stopped by
its own PID (SIGTERM, then SIGKILL after a bound), so a test never touches a
process it did not start.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "model_repository"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        # nothing listening yet, or another process's non-HTTP/1 server (a gRPC server
        # answers with an HTTP/2 GOAWAY) on a port picked free that it took first: our
        # server then exits with "unable to bind" and start() picks new ports
        return None


class _PortTaken(Exception):
    pass


class NaiadProcess:
    """A ``naiad`` server in a child process, on free loopback ports."""

    def __init__(self, repositories, *flags: str, wait: str = "ready", env: dict | None = None,
                 startup_timeout: float = 60.0):
        if isinstance(repositories, (str, Path)):
            repositories = [repositories]
        self._repositories = list(repositories)
        self._flags = flags
        self._pick_ports()
        self.wait = wait
        self.env = dict(os.environ, **(env or {}))
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def _pick_ports(self) -> None:
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.http_port, self.grpc_port, self.metrics_port = sorted(ports)
        self.args = [sys.executable, "-m", "naiad"]
        self.args += [f"--model-repository={r}" for r in self._repositories]
        self.args += [
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            *self._flags,
        ]

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> "NaiadProcess":
        # A port picked free can be taken (by any process's outgoing connection) before
        # the server binds it: the server then exits with "unable to bind"; pick again.
        for attempt in range(3):
            try:
                return self._start()
            except _PortTaken:
                if attempt == 2:
                    raise RuntimeError(f"naiad could not bind its ports:\n{self.output()}")
                self._pick_ports()
        raise AssertionError("unreachable")

    def _start(self) -> "NaiadProcess":
        import tempfile

        fd, path = tempfile.mkstemp(prefix="naiad-test-", suffix=".log")
        self.log_path = Path(path)
        self._log = os.fdopen(fd, "w")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=str(ROOT))
        if self.wait == "none":
            return self
        deadline = time.monotonic() + self.startup_timeout
        probe = "/v2/health/ready" if self.wait == "ready" else "/v2/health/live"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.output()
                if "unable to bind" in out:
                    raise _PortTaken(out)
                raise RuntimeError(f"naiad exited with {self.proc.returncode}:\n{out}")
            if _http_status(self.base + probe) == 200:
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"naiad did not become {self.wait} in time:\n{self.output()}")

    def output(self) -> str:
        if self.log_path is None:
            return ""
        try:
            self._log.flush()
        except Exception:
            pass
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        code = self.proc.returncode
        with contextlib.suppress(Exception):
            self._log.close()
        return code

    def __enter__(self) -> "NaiadProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()


def write_model(repo: Path, name: str, config: str, files: dict[str, str] | None = None,
                versions=(1,)) -> Path:
    """Create <repo>/<name>/config.pbtxt and version folders with the given files.

    ``files`` maps a path relative to each version folder (e.g. "model.py") to
    its text; ``config`` may be "" to omit config.pbtxt.
    """
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if config:
        (model_dir / "config.pbtxt").write_text(textwrap.dedent(config))
    for v in versions:
        vdir = model_dir / str(v)
        vdir.mkdir(exist_ok=True)
        for rel, text in (files or {}).items():
            target = vdir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(textwrap.dedent(text))
    return model_dir


def copy_example(repo: Path, name: str) -> Path:
    dest = repo / name
    shutil.copytree(EXAMPLES / name, dest)
    return dest


def example_script(example: str, name: str):
    """``examples/<example>/<name>.py`` imported as ``<example>_<name>``.

    The examples' scripts share file names (``setup_models``, ``client``), so a test that
    imported them by plain name would get whichever example's module came first. The
    script's folder goes on ``sys.path`` for its own sibling modules."""
    import importlib.util

    key = f"{example}_{name}"
    if key in sys.modules:
        return sys.modules[key]
    folder = ROOT / "examples" / example
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(key, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


@pytest.fixture(scope="session")
def example_server():
    """One naiad serving examples/model_repository for the whole session."""
    with NaiadProcess(EXAMPLES) as server:
        yield server


@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path
