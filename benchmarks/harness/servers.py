"""Starting, pinning, health-checking and stopping the servers under test.

Each server is started on free 127.0.0.1 ports picked here, pinned with
``taskset -c CPUS`` (its child processes, e.g. python-backend stubs, inherit the
affinity), waited on with ``GET /v2/health/ready`` (bounded), and stopped by its
PID at the end: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .v2 import http_get

READY_TIMEOUT_S = 180.0
STOP_GRACE_S = 20.0


class ServerUnavailable(RuntimeError):
    """The server could not be started or never became ready."""


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def cpus_allowed(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def descendants(pid: int) -> list[int]:
    """PIDs of all live descendants of ``pid`` (scan of /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def pin_prefix(cpus: str | None) -> list[str]:
    if not cpus:
        return []
    if not shutil.which("taskset"):
        raise ServerUnavailable("taskset (util-linux) not found; run with --no-pin")
    return ["taskset", "-c", cpus]


class Server:
    """Base: a v2 server on 127.0.0.1 with http/grpc/metrics ports."""

    name = "server"

    def __init__(self, repo: Path, cpus: str | None, log_dir: Path):
        self.repo = Path(repo).resolve()
        self.cpus = cpus
        self.log_dir = Path(log_dir)
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.pid: int | None = None
        self.log_path: Path | None = None
        self.info: dict = {"name": self.name}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ports(self) -> dict:
        return {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}

    # -- to override ------------------------------------------------------
    def _launch(self) -> int:
        raise NotImplementedError

    def _terminate(self, pid: int) -> None:
        os.kill(pid, signal.SIGTERM)

    # -- common -----------------------------------------------------------
    def start(self, models: list[str], timeout: float = READY_TIMEOUT_S) -> dict:
        self.pid = self._launch()
        self.info.update(pid=self.pid, ports=self.ports, log=str(self.log_path))
        try:
            self.wait_ready(models, timeout)
        except BaseException:
            self.stop()
            raise
        self.info["cpus_allowed"] = cpus_allowed(self.pid)
        kids = descendants(self.pid)
        self.info["children_cpus_allowed"] = sorted({cpus_allowed(k) or "?" for k in kids})
        code, body = http_get(self.base_url + "/v2")
        if code == 200:
            try:
                meta = json.loads(body)
                self.info["server_metadata"] = {k: meta.get(k) for k in ("name", "version")}
            except ValueError:
                pass
        return self.info

    def wait_ready(self, models: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        urls = [self.base_url + "/v2/health/ready"] + [
            f"{self.base_url}/v2/models/{m}/ready" for m in models]
        pending = list(urls)
        while pending:
            if not pid_alive(self.pid):
                raise ServerUnavailable(f"{self.name} exited before becoming ready"
                                        f"\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"{self.name} not ready after {timeout:.0f}s "
                                        f"({pending[0]})\n{self.log_tail()}")
            try:
                code, _ = http_get(pending[0], timeout=2.0)
            except OSError:
                code = None
            if code == 200:
                pending.pop(0)
            else:
                time.sleep(0.25)

    def stop(self) -> None:
        pid, self.pid = self.pid, None
        if pid is None or not pid_alive(pid):
            return
        kids = descendants(pid)
        try:
            self._terminate(pid)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_GRACE_S
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in [pid] + kids:  # by PID: the server and what it had started
            if pid_alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    _proc: subprocess.Popen | None = None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join("    | " + line for line in lines[-n:])
        except (OSError, AttributeError):
            return "    | (no log)"


class NaiadServer(Server):
    """naiad, driven through its tritonserver-compatible command line."""

    name = "naiad"

    def __init__(self, repo, cpus, log_dir, exe: str | None, extra_args=(), name=None):
        if name:
            self.name = name
        super().__init__(repo, cpus, log_dir)
        self.exe = exe
        self.extra_args = list(extra_args)
        self.info["exe"] = exe

    @staticmethod
    def find_exe(repo_root: Path) -> tuple[str | None, str]:
        cand = os.environ.get("NAIAD_BIN") or str(repo_root / ".venv" / "bin" / "naiad")
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand, ""
        w = shutil.which("naiad")
        if w:
            return w, ""
        return None, f"naiad executable not found ({cand}, nor on PATH; set NAIAD_BIN)"

    def _launch(self) -> int:
        if not self.exe:
            raise ServerUnavailable("naiad executable not found")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"naiad-{self.http_port}.log"
        cmd = pin_prefix(self.cpus) + [
            self.exe,
            f"--model-repository={self.repo}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            *self.extra_args,
        ]
        self.info["cmd"] = cmd
        with open(self.log_path, "wb") as log:
            try:
                self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                raise ServerUnavailable(f"cannot run {self.exe}: {e}") from None
        return self._proc.pid  # taskset execs the server: same PID


class ReferenceTriton(Server):
    """The reference Triton 2.51 via shared/reference/triton.sh."""

    name = "reference"

    def __init__(self, repo, cpus, log_dir, script: Path):
        super().__init__(repo, cpus, log_dir)
        self.script = Path(script)
        self.info["script"] = str(self.script)

    def _launch(self) -> int:
        if not self.script.is_file():
            raise ServerUnavailable(f"reference script not found: {self.script}")
        ref = Path(os.environ.get("NAIAD_REF_DIR", Path.home() / ".cache" / "naiad-reference"))
        self.log_path = ref / f"triton-{self.http_port}.log"
        setup = subprocess.run(["bash", str(self.script), "setup"], capture_output=True,
                               text=True, timeout=900, check=False)
        if setup.returncode != 0:
            raise ServerUnavailable(f"triton.sh setup failed: {setup.stderr[-2000:]}")
        # taskset on the script: the tritonserver it starts (and its stubs) inherit CPU 0.
        cmd = pin_prefix(self.cpus) + [
            "bash", str(self.script), "start", str(self.repo),
            str(self.http_port), str(self.grpc_port), str(self.metrics_port)]
        self.info["cmd"] = cmd
        # its own session, as naiad's: with autogroup scheduling each session shares a
        # busy core as one group, so both servers must be in groups of their own
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL, check=False, start_new_session=True)
        out = r.stdout.strip().splitlines()
        if r.returncode != 0 or not out or not out[-1].strip().isdigit():
            raise ServerUnavailable(f"triton.sh start failed (rc {r.returncode}): "
                                    f"{r.stdout[-1000:]} {r.stderr[-1000:]}")
        return int(out[-1].strip())

    def _terminate(self, pid: int) -> None:
        subprocess.run(["bash", str(self.script), "stop", str(pid)], capture_output=True,
                       timeout=30, check=False)
