"""Readiness that tells the truth: server and model states through loads and failures."""

from __future__ import annotations

import threading
import time

import tritonclient.http as httpclient

from tests.clients import call, infer, states, wait_for
from tests.conftest import NaiadProcess
from tests.models import add_model


def _ready(server) -> int:
    return call(server.base, "GET", "/v2/health/ready")[0]


def test_a_slow_load_does_not_delay_other_models(repo, tmp_path):
    release = tmp_path / "release"
    add_model(repo, "fast", offset=1)
    add_model(repo, "fast2", offset=3)
    add_model(repo, "slowload", offset=2, hold_until=str(release))  # loads until released
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=fast",
                      "--model-load-thread-count=2") as server:
        slow = threading.Thread(target=call, args=(server.base, "POST",
                                                   "/v2/repository/models/slowload/load", {}))
        slow.start()
        wait_for(lambda: states(server.base)["slowload"] == [("1", "LOADING")],
                 what="slowload loading")
        # while it loads: the server is not ready (strict), loaded models serve and
        # another model loads and becomes ready at once
        assert _ready(server) == 400
        assert call(server.base, "GET", "/v2/models/fast/ready")[0] == 200
        assert infer(server.base, "fast")[:2] == (200, 1)
        assert call(server.base, "POST", "/v2/repository/models/fast2/load", {})[0] == 200
        assert call(server.base, "GET", "/v2/models/fast2/ready")[0] == 200
        assert call(server.base, "GET", "/v2/models/slowload/ready")[0] == 400
        assert states(server.base)["slowload"] == [("1", "LOADING")]
        release.write_text("")
        slow.join(60)
        assert _ready(server) == 200
        assert call(server.base, "GET", "/v2/models/slowload/ready")[0] == 200


def test_startup_loads_in_parallel(repo, tmp_path):
    # each initialize waits until all four run at once: loads one after another would
    # fail (after 60 s), and the server would not start
    (tmp_path / "meet").mkdir()
    for i in range(4):
        add_model(repo, f"s{i}", meet=(str(tmp_path / "meet"), 4))
    with NaiadProcess(repo, "--model-load-thread-count=4") as server:
        assert all(call(server.base, "GET", f"/v2/models/s{i}/ready")[0] == 200
                   for i in range(4))


def test_strict_and_non_strict_readiness_with_a_failed_model(repo):
    add_model(repo, "good", offset=1)
    add_model(repo, "bad", fail=True)
    with NaiadProcess(repo, "--exit-on-error=false", wait="live") as server:
        assert states(server.base)["bad"][0][1] == "UNAVAILABLE"
        assert _ready(server) == 400  # strict: a model that should serve does not
        assert call(server.base, "GET", "/v2/models/good/ready")[0] == 200
    with NaiadProcess(repo, "--exit-on-error=false", "--strict-readiness=false") as server:
        assert _ready(server) == 200
        assert call(server.base, "GET", "/v2/models/bad/ready")[0] == 400


def test_exit_on_error_stops_a_server_whose_model_fails(repo):
    add_model(repo, "bad", fail=True)
    server = NaiadProcess(repo, wait="none").start()
    try:
        assert server.proc.wait(timeout=60) == 1
        assert "failed to load all models" in server.output()
    finally:
        server.stop()


def test_readiness_through_explicit_loads_reloads_and_unloads(repo, tmp_path):
    add_model(repo, "a", offset=1)
    add_model(repo, "b", offset=2, init_sleep=2)
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=a") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert _ready(server) == 200
        seen: list[tuple[int, int, list]] = []
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                seen.append((_ready(server),
                             call(server.base, "GET", "/v2/models/b/ready")[0],
                             states(server.base).get("b")))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        client.load_model("b")  # first load: LOADING, the server is not ready meanwhile
        time.sleep(0.2)
        (repo / "b" / "1" / "model.py").write_text(
            (repo / "b" / "1" / "model.py").read_text().replace("OFFSET = 2", "OFFSET = 3"))
        client.load_model("b")  # a reload: b keeps serving, the server stays ready
        time.sleep(0.2)
        stop.set()
        watcher.join()
        loading = next(i for i, s in enumerate(seen) if s[2] == [("1", "LOADING")])
        first_load_done = next(i for i, s in enumerate(seen) if s[1] == 200)
        assert loading < first_load_done
        # (the sample that first saw LOADING took its other probes just before)
        assert all(s[0] == 400 and s[1] == 400 for s in seen[loading + 1:first_load_done]), seen
        # (a sample's three probes are not simultaneous: the one that first saw b
        # ready may have seen the server just before; every later one sees both)
        assert all(s[0] == 200 and s[1] == 200 for s in seen[first_load_done + 1:]), seen
        assert infer(server.base, "b")[:2] == (200, 3)
        client.unload_model("b")
        assert call(server.base, "GET", "/v2/models/b/ready")[0] == 400
        assert _ready(server) == 200  # an unloaded model does not count
