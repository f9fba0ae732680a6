"""Graceful shutdown: SIGTERM drains in-flight requests, refuses new ones, exits 0."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.clients import call, infer, pending_requests, wait_for
from tests.conftest import NaiadProcess
from tests.models import add_model


def _send_and_forget(server, seconds: float) -> threading.Thread:
    """A request the server will not finish (its connection breaks when it exits)."""
    def run():
        try:
            infer(server.base, "slow", values=(0.0, seconds), timeout=seconds + 30)
        except OSError:
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _busy(events, n: int) -> None:
    wait_for(lambda: events.exists() and events.read_text().count("busy ") >= n,
             what=f"{n} requests executing")


def test_sigterm_finishes_requests_in_flight_and_refuses_new_ones(repo, tmp_path):
    events = tmp_path / "events.txt"
    add_model(repo, "slow", offset=1, count=4, events=str(events), inline=False)
    add_model(repo, "fast", offset=2)
    server = NaiadProcess(repo, "--exit-timeout-secs=30").start()
    try:
        answers: list = []

        def slow_request():
            answers.append(infer(server.base, "slow", values=(0.0, 2.0), timeout=60))

        threads = [threading.Thread(target=slow_request) for _ in range(6)]
        for t in threads:
            t.start()
        _busy(events, 4)  # four executing, two waiting in the queue
        wait_for(lambda: pending_requests(server, "slow") == 2, what="two queued")
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: call(server.base, "GET", "/v2/health/ready")[0] == 400,
                 timeout=5, what="not ready")
        assert call(server.base, "GET", "/v2/health/live")[0] == 200
        assert call(server.base, "GET", "/v2/models/fast/ready")[0] == 400
        status, _, body = infer(server.base, "fast")
        assert status == 503
        assert "shutting down" in body["error"]
        client = httpclient.InferenceServerClient(server.http_url)
        with pytest.raises(InferenceServerException, match="shutting down"):
            import numpy as np

            inp = httpclient.InferInput("IN", [1], "FP32")
            inp.set_data_from_numpy(np.ones(1, dtype=np.float32))
            client.infer("fast", [inp])
        for t in threads:
            t.join(60)
        assert [a[:2] for a in answers] == [(200, 1)] * 6
        assert server.proc.wait(timeout=30) == 0
        assert time.monotonic() - t0 < 20
        lines = events.read_text().split("\n")
        # every instance finalized, after the requests it was running
        assert sorted(x for x in lines if x.startswith("fini")) == [
            f"fini slow_0_{i}" for i in range(4)]
        assert "server stopped" in server.output()
    finally:
        server.stop()


def test_exit_timeout_ends_a_drain_that_takes_too_long(repo, tmp_path):
    events = tmp_path / "events.txt"
    add_model(repo, "slow", offset=1, events=str(events), inline=False)
    server = NaiadProcess(repo, "--exit-timeout-secs=1").start()
    try:
        _send_and_forget(server, 120.0)
        _busy(events, 1)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 1
        assert time.monotonic() - t0 < 60  # the 1 s exit timeout, not the 120 s request
        assert "Exit timeout expired" in server.output()
    finally:
        server.stop()


def test_second_signal_exits_at_once(repo, tmp_path):
    events = tmp_path / "events.txt"
    add_model(repo, "slow", offset=1, events=str(events), inline=False)
    server = NaiadProcess(repo, "--exit-timeout-secs=60").start()
    try:
        _send_and_forget(server, 120.0)
        _busy(events, 1)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.proc.poll() is None  # draining
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=60) == 1
        assert time.monotonic() - t0 < 50  # at once: not the 60 s exit timeout's drain
    finally:
        server.stop()
