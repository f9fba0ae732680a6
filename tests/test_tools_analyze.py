"""``naiad analyze``: a small sweep served for real (short windows, two concurrency levels).

What is checked is what the sweep produced (configurations, rows, the best
config, the report's parts), never how fast anything ran.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, copy_example, write_model

FAST = ["-p", "150", "-s", "1000", "--concurrency", "1,2", "--no-progress"]

BATCH_PY = '''
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() + 1)])
            for r in requests]
'''

BATCH_CONFIG = """
name: "inc"
backend: "python"
max_batch_size: 4
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("analyze") / "models"
    copy_example(path, "add_sub")
    write_model(path, "inc", BATCH_CONFIG, {"model.py": BATCH_PY})
    return path


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "naiad", "analyze", *args],
                          capture_output=True, text=True, timeout=600, cwd=str(ROOT))


def rows(export) -> list[dict]:
    with open(export / "results" / "metrics-model-inference.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def brute(repo, tmp_path_factory):
    export = tmp_path_factory.mktemp("brute")
    r = analyze("-m", str(repo), "--profile-models", "add_sub,inc", "-e", str(export),
                "--instance-counts", "1,2", "--max-batch-sizes", "4", *FAST)
    return r, export


def test_brute_sweep_measures_every_configuration(brute):
    r, export = brute
    assert r.returncode == 0, r.stdout + r.stderr
    data = rows(export)
    configs = {(d["model"], d["variant"]) for d in data}
    # add_sub cannot batch: the repository's config (1 instance) and 2 instances
    assert {v for m, v in configs if m == "add_sub"} == {"default", "2 inst"}
    # inc batches: instances x max_batch_size x dynamic batching off/on (its default,
    # 1 instance, max_batch_size 4, no dynamic batching, is measured once, as "default")
    assert {v for m, v in configs if m == "inc"} == {
        "default", "1 inst, mbs 4, dyn", "2 inst, mbs 4", "2 inst, mbs 4, dyn"}
    for d in data:
        assert d["concurrency"] in ("1", "2")
        assert float(d["throughput"]) > 0 and float(d["p99_ms"]) >= float(d["p50_ms"]) > 0
    assert sorted((export / "output_model_repository").iterdir())
    assert (export / "output_model_repository" / "inc_config_default" / "config.pbtxt").exists()


def test_best_config_is_the_best_measurement_and_loads(brute, repo, tmp_path):
    r, export = brute
    data = rows(export)
    for model in ("add_sub", "inc"):
        best = max((d for d in data if d["model"] == model), key=lambda d: float(d["throughput"]))
        line = re.search(rf"^{model}: best (.+?) — ([\d,.]+) infer/s at concurrency (\d+)",
                         r.stdout, re.M)
        assert line, r.stdout
        assert line[1] == best["variant"] and line[3] == best["concurrency"]
        text = (export / "best_configs" / model / "config.pbtxt").read_text()
        assert text.startswith("# naiad analyze: best of ")
        # the best config drops into the repository and loads
        check = tmp_path / model
        subprocess.run(["cp", "-r", str(repo / model), str(check)], check=True)
        (check / "config.pbtxt").write_text(text)
        v = subprocess.run([sys.executable, "-m", "naiad", "validate", str(tmp_path)],
                           capture_output=True, text=True, cwd=str(ROOT))
        assert v.returncode == 0, v.stdout
        if "2 inst" in best["variant"]:
            assert "count: 2" in text


def test_report_is_one_page_with_plots_and_tables(brute):
    _, export = brute
    page = (export / "reports" / "report.html").read_text()
    assert page.count("<img src='data:image/png;base64,") == 4  # two plots per model
    assert page.count("<h2>") == 2 and "Pareto" not in page  # the front is in the plot
    assert "<table>" in page and "best config.pbtxt" in page
    assert "class='star'" in page


def test_constraints_and_time_budget(repo, tmp_path):
    export = tmp_path / "tight"
    r = analyze("-m", str(repo), "--profile-models", "add_sub", "-e", str(export),
                "--run-config-search-disable", "--latency-budget-ms", "0.000001", *FAST)
    assert r.returncode == 1
    assert "add_sub: no configuration meets the constraints (1 measured)" in r.stdout
    assert "No configuration meets the constraints" in \
        (export / "reports" / "report.html").read_text()
    export = tmp_path / "budget"
    r = analyze("-m", str(repo), "--profile-models", "add_sub", "-e", str(export),
                "--time-budget", "0.5", *FAST)
    assert r.returncode == 1  # nothing fits in half a second
    assert "left out by the time budget" in (export / "reports" / "report.html").read_text()


def test_quick_search_climbs(repo, tmp_path):
    export = tmp_path / "quick"
    r = analyze("-m", str(repo), "--profile-models", "inc", "-e", str(export),
                "--run-config-search-mode", "quick", "--instance-counts", "1,2",
                "--max-batch-sizes", "1,2", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    variants = {d["variant"] for d in rows(export)}
    # the baseline, the starting point (smallest), and at least its neighbours
    assert {"default", "1 inst, mbs 1, dyn", "2 inst, mbs 1, dyn", "1 inst, mbs 2, dyn",
            "1 inst, mbs 1"} <= variants
    brute_size = 1 + 2 * 2 * 2
    assert len(variants) < brute_size


def test_refusals(repo, tmp_path):
    r = analyze("-m", str(repo), "--profile-models", "nope", "-e", str(tmp_path / "x"))
    assert r.returncode == 1 and "model 'nope' is not in" in r.stderr
    r = analyze("-m", str(repo), "--profile-models", "add_sub", "--instance-counts", "0")
    assert r.returncode == 2
    r = analyze("--help")
    assert r.returncode == 0
    for flag in ("--profile-models", "--latency-budget-ms", "--min-throughput",
                 "--time-budget", "--run-config-search-mode", "--export-path"):
        assert flag in r.stdout
