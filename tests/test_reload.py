"""Live reload under continuous traffic: nothing accepted fails, the switch is atomic."""

from __future__ import annotations

import threading

import tritonclient.http as httpclient

from tests.clients import Traffic, call, index, infer, states, wait_for
from tests.conftest import NaiadProcess
from tests.models import add_model, config_text, model_py


def _switches_once(results: list[float], old: float, new: float) -> bool:
    """Per client thread: old answers, then only new ones (a thread is sequential)."""
    if new in results:
        first = results.index(new)
        return all(r == old for r in results[:first]) and all(r == new for r in results[first:])
    return all(r == old for r in results)


def test_reload_add_version_and_unload_under_traffic(repo):
    add_model(repo, "steady", offset=100)
    add_model(repo, "hot", offset=1)
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=*") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        with Traffic(server.http_url, "steady", threads=2) as steady, \
                Traffic(server.http_url, "hot", threads=3) as hot:
            hot.wait_count(30)
            steady.wait_count(30)
            # 1. change the code of version 1 and reload: old serves until new is READY
            (repo / "hot" / "1" / "model.py").write_text(model_py(offset=2))
            client.load_model("hot")
            n = hot.count
            hot.wait_count(n + 30)
            # 2. add version 2 (policy latest 1): version 1 retires after 2 is READY
            (repo / "hot" / "2").mkdir()
            (repo / "hot" / "2" / "model.py").write_text(model_py(offset=3))
            client.load_model("hot")
            n = hot.count
            hot.wait_count(n + 30)
            # 3. count-only change while traffic flows
            (repo / "hot" / "config.pbtxt").write_text(config_text("hot", count=3))
            client.load_model("hot")
            n = hot.count
            hot.wait_count(n + 30)
        assert hot.errors == []
        assert steady.errors == []
        assert all(set(r) == {100.0} for r in steady.results)
        for r in hot.results:
            seen = [x for i, x in enumerate(r) if i == 0 or r[i - 1] != x]
            assert seen == sorted(seen), seen  # 1 -> 2 -> 3, never back
            assert set(r) <= {1.0, 2.0, 3.0}
        assert 3.0 in hot.results[0] or 3.0 in hot.results[1] or 3.0 in hot.results[2]
        st = states(server.base)
        assert st["hot"] == [("1", "UNAVAILABLE"), ("2", "READY")]
        assert client.get_model_config("hot")["instance_group"][0]["count"] == 3

        # unload under traffic: the unaffected model never fails
        with Traffic(server.http_url, "steady", threads=2) as steady:
            steady.wait_count(20)
            client.unload_model("hot")
            n = steady.count
            steady.wait_count(n + 20)
        assert steady.errors == []
        assert infer(server.base, "hot")[0] == 404


def _busy(events, n: int) -> None:
    wait_for(lambda: events.exists() and events.read_text().count("busy ") >= n,
             what=f"{n} requests executing")


def test_requests_in_flight_on_a_replaced_or_unloaded_version_finish(repo, tmp_path):
    events = tmp_path / "events.txt"
    add_model(repo, "slow", offset=1, count=2, events=str(events), inline=False)
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=slow") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        answers: list = []

        def slow_request():
            answers.append(infer(server.base, "slow", values=(0.0, 1.5)))

        threads = [threading.Thread(target=slow_request) for _ in range(2)]
        for t in threads:
            t.start()
        _busy(events, 2)
        (repo / "slow" / "1" / "model.py").write_text(model_py(offset=5, events=str(events)))
        client.load_model("slow")  # returns once the new version serves
        assert infer(server.base, "slow")[:2] == (200, 5)
        for t in threads:
            t.join(30)
        assert [a[:2] for a in answers] == [(200, 1), (200, 1)]

        answers.clear()
        threads = [threading.Thread(target=slow_request) for _ in range(2)]
        for t in threads:
            t.start()
        _busy(events, 4)
        client.unload_model("slow")  # returns at once; the two requests finish
        assert states(server.base)["slow"] == [("1", "UNLOADING")]
        assert infer(server.base, "slow")[0] == 404
        for t in threads:
            t.join(30)
        assert [a[:2] for a in answers] == [(200, 5), (200, 5)]
        wait_for(lambda: states(server.base)["slow"] == [("1", "UNAVAILABLE")],
                 what="unloaded")


def test_failed_reload_keeps_the_old_version_serving(repo):
    add_model(repo, "m", offset=1)
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=m") as server:
        with Traffic(server.http_url, "m", threads=2) as traffic:
            traffic.wait_count(20)
            (repo / "m" / "1" / "model.py").write_text(model_py(offset=9, fail=True))
            status, body, _ = call(server.base, "POST", "/v2/repository/models/m/load", {})
            assert status == 400
            assert "initialize failed on purpose" in body["error"]
            (repo / "m" / "config.pbtxt").write_text("name: \"m\" backend: \"python\" bogus: 1")
            status, body, _ = call(server.base, "POST", "/v2/repository/models/m/load", {})
            assert status == 400 and "bogus" in body["error"]
            n = traffic.count
            traffic.wait_count(n + 20)
        assert traffic.errors == []
        assert all(set(r) == {1.0} for r in traffic.results)
        assert index(server.base) == [{"name": "m", "version": "1", "state": "READY"}]
        assert call(server.base, "GET", "/v2/health/ready")[0] == 200


def test_instance_count_change_adds_and_removes_instances_without_reload(repo, tmp_path):
    events = tmp_path / "events.txt"
    add_model(repo, "m", offset=1, count=1, events=str(events))
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=m") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert events.read_text().split("\n")[:-1] == ["init m_0_0 1"]
        with Traffic(server.http_url, "m", threads=3) as traffic:
            traffic.wait_count(20)
            (repo / "m" / "config.pbtxt").write_text(config_text("m", count=3))
            client.load_model("m")
            n = traffic.count
            traffic.wait_count(n + 20)
            lines = events.read_text().split("\n")[:-1]
            assert lines == ["init m_0_0 1", "init m_0_1 1", "init m_0_2 1"]
            (repo / "m" / "config.pbtxt").write_text(config_text("m", count=1))
            client.load_model("m")
            n = traffic.count
            traffic.wait_count(n + 20)
        assert traffic.errors == []
        lines = events.read_text().split("\n")[:-1]
        assert lines[:3] == ["init m_0_0 1", "init m_0_1 1", "init m_0_2 1"]
        assert sorted(lines[3:]) == ["fini m_0_1", "fini m_0_2"]  # m_0_0 never restarted
        assert client.get_model_config("m")["instance_group"][0]["count"] == 1
