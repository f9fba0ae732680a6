"""A real multi-node Ray cluster on this machine, for tests and benchmarks.

Each node is its own ``ray start --block`` process (a head, then workers
joining it) with its own ports and temporary directory; every process Ray
starts for a node descends from that command, so stopping the cluster
terminates exactly those processes, by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(count: int) -> tuple[int, int]:
    """``count`` consecutive ports that are free now (checked one by one)."""
    for _ in range(50):
        base = free_port()
        if base + count >= 65000:
            continue
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base, base + count - 1
    raise RuntimeError("no free port range")


class RayNode:
    def __init__(self, cluster: "RayCluster", name: str, num_cpus: int, head: bool):
        self.cluster = cluster
        self.name = name
        self.head = head
        self.num_cpus = num_cpus
        self.temp_dir = tempfile.mkdtemp(prefix=f"nr{name[0]}", dir="/tmp")
        self.port = free_port() if head else None
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.temp_dir, "ray-start.log")
        # Loopback addresses only, one per node. (Ray swaps "127.0.0.1" and "localhost"
        # for the machine's network address; the rest of 127.0.0.0/8 it keeps.)
        self.ip = f"127.0.0.{2 + len(cluster.nodes)}"

    def command(self) -> list[str]:
        low, high = free_port_range(24)
        cmd = [RAY, "start", "--block", f"--node-ip-address={self.ip}",
               f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}",
               "--disable-usage-stats", "--include-log-monitor=false",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--min-worker-port={low}", f"--max-worker-port={high}",
               f"--object-store-memory={100 * 1024 * 1024}"]
        if self.head:
            cmd += ["--head", f"--port={self.port}", "--include-dashboard=false",
                    f"--dashboard-port={free_port()}",
                    f"--ray-client-server-port={free_port()}"]
        else:
            cmd += [f"--address={self.cluster.address}"]
        return cmd

    def start(self) -> None:
        log = open(self.log_path, "wb")
        env = dict(self.cluster.env)
        self.proc = subprocess.Popen(self.cluster.pin + self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        log.close()

    def pids(self) -> set[int]:
        """This node's ``ray start`` process and every process under it."""
        if self.proc is None:
            return set()
        found: set[int] = set()
        try:
            root = psutil.Process(self.proc.pid)
            found = {root.pid} | {p.pid for p in root.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
        # anything reparented away from the tree still names this node's own temp dir
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmdline = p.info.get("cmdline") or []
            if any(self.temp_dir in part for part in cmdline):
                found.add(p.info["pid"])
        return found

    def output(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""


class RayCluster:
    """``RayCluster([2, 2])``: a head with 2 CPUs and one worker with 2 CPUs."""

    def __init__(self, cpus: list[int], env: dict | None = None, pin: str | None = None):
        self.env = dict(os.environ)
        self.env.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
                         "PYTHONUNBUFFERED": "1"})
        self.env.update(env or {})
        # "taskset -c LIST" for every node process (and so every worker): benchmarks
        self.pin = ["taskset", "-c", pin] if pin else []
        self.nodes: list[RayNode] = []
        self.nodes.append(RayNode(self, "head", cpus[0], True))
        for i, n in enumerate(cpus[1:]):
            self.nodes.append(RayNode(self, f"worker{i}", n, False))

    @property
    def address(self) -> str:
        return f"{self.nodes[0].ip}:{self.nodes[0].port}"

    def start(self, timeout: float = 90.0) -> "RayCluster":
        head = self.nodes[0]
        head.start()
        self._wait_for_port(head, timeout)
        for node in self.nodes[1:]:
            node.start()
        self.wait_for_nodes(len(self.nodes), timeout)
        return self

    def _wait_for_port(self, head: RayNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if head.proc.poll() is not None:
                raise RuntimeError(f"ray head exited:\n{head.output()[-3000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", head.port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"ray head did not start:\n{head.output()[-3000:]}")

    def wait_for_nodes(self, count: int, timeout: float) -> None:
        """Until ``count`` raylets run (one per node's process tree)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc.poll() is not None:
                    raise RuntimeError(f"ray node {node.name} exited:\n{node.output()[-3000:]}")
            ready = sum(1 for node in self.nodes if self._raylet(node) and
                        "Ray runtime started" in node.output())
            if ready >= count:
                return
            time.sleep(0.3)
        raise RuntimeError("ray nodes did not start:\n" +
                           "\n".join(n.output()[-2000:] for n in self.nodes))

    @staticmethod
    def _raylet(node: RayNode) -> bool:
        for pid in node.pids():
            try:
                if psutil.Process(pid).name().startswith("raylet"):
                    return True
            except psutil.NoSuchProcess:
                pass
        return False

    def node_of(self, pid: int) -> RayNode | None:
        """The node whose process tree holds ``pid``."""
        for node in self.nodes:
            if pid in node.pids():
                return node
        return None

    def logs(self, limit: int = 6000) -> str:
        """The tail of every node's Serve and worker error logs (for failure messages)."""
        parts = []
        for node in self.nodes:
            logs = Path(node.temp_dir) / "session_latest" / "logs"
            for path in sorted(logs.glob("serve/*.log")) + sorted(logs.glob("worker-*.err")):
                text = path.read_text(errors="replace")
                if "Error" in text or "Traceback" in text:
                    parts.append(f"== {node.name}: {path.name}\n{text[-limit:]}")
        return "\n".join(parts)[-4 * limit:]

    def run(self, *args: str, timeout: float = 180.0, env: dict | None = None
            ) -> subprocess.CompletedProcess:
        """A driver command (``naiad ray ...``) against this cluster."""
        full_env = dict(self.env)
        full_env.update(env or {})
        return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                              env=full_env)

    def stop(self, timeout: float = 8.0) -> None:
        """SIGTERM each node's processes by PID (workers first), then SIGKILL what is left."""
        pids: list[int] = []
        for node in reversed(self.nodes):
            pids += sorted(node.pids() - set(pids))
        procs = []
        for pid in pids:
            try:
                p = psutil.Process(pid)
                p.send_signal(signal.SIGTERM)
                procs.append(p)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    pass
            shutil.rmtree(node.temp_dir, ignore_errors=True)

    def __enter__(self) -> "RayCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
