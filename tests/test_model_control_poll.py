"""Poll mode: added, changed and removed models and versions are picked up."""

from __future__ import annotations

import shutil
import time

from tests.clients import NOT_ALLOWED_MESSAGE, Traffic, call, infer, states, wait_for
from tests.conftest import NaiadProcess
from tests.models import add_model, model_py


def test_poll_mode_follows_the_repository_under_traffic(repo, tmp_path):
    events = tmp_path / "events.txt"
    add_model(repo, "a", offset=1)
    add_model(repo, "quiet", offset=5, events=str(events))
    with NaiadProcess(repo, "--model-control-mode=poll", "--repository-poll-secs=0.3") as server:
        status, body, _ = call(server.base, "POST", "/v2/repository/models/a/load", {})
        assert (status, body) == (503, {"error": NOT_ALLOWED_MESSAGE})

        with Traffic(server.http_url, "a", threads=3) as traffic:
            traffic.wait_count(20)
            # a new model appears
            add_model(repo, "b", offset=10)
            wait_for(lambda: states(server.base).get("b") == [("1", "READY")], what="b loaded")
            assert infer(server.base, "b")[:2] == (200, 10)
            # a model changes: the new code takes over, nothing fails
            (repo / "a" / "1" / "model.py").write_text(model_py(offset=2))
            wait_for(lambda: any(2.0 in r for r in traffic.results), what="a reloaded")
            # a change that fails to load keeps the old one serving
            (repo / "a" / "1" / "model.py").write_text(model_py(offset=3, fail=True))
            time.sleep(1.5)
            n = traffic.count
            traffic.wait_count(n + 20)
        assert traffic.errors == []
        for r in traffic.results:
            assert set(r) <= {1.0, 2.0} and r[-1] == 2.0
        assert states(server.base)["a"] == [("1", "READY")]
        # the failure is fixed: picked up again
        (repo / "a" / "1" / "model.py").write_text(model_py(offset=4))
        wait_for(lambda: infer(server.base, "a")[1] == 4, what="a fixed")

        # a new version
        (repo / "b" / "2").mkdir()
        (repo / "b" / "2" / "model.py").write_text(model_py(offset=20))
        wait_for(lambda: states(server.base).get("b") == [("1", "UNAVAILABLE"), ("2", "READY")],
                 what="b version 2")
        assert infer(server.base, "b")[:2] == (200, 20)
        # a removed model leaves the index
        shutil.rmtree(repo / "b")
        wait_for(lambda: "b" not in states(server.base), what="b removed")
        assert infer(server.base, "b")[0] == 404

        # an untouched model was never reloaded by all those polls
        assert events.read_text().count("init ") == 1
        assert call(server.base, "GET", "/v2/health/ready")[0] == 200
