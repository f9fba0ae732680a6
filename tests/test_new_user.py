"""What a new user meets first: the README's snippets run as written, hints that work from
a clone, uvicorn only when asked for, --help with defaults, the OCR example's own extra."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import tritonclient.http as httpclient

from naiad import cli
from tests.conftest import EXAMPLES, ROOT, NaiadProcess, copy_example

README = (ROOT / "README.md").read_text()


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_embedded_snippet_runs_on_its_own():
    (snippet,) = [b for b in _python_blocks(README) if "EmbeddedServer" in b]
    out = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[5. 5. 5. 5.] [-3. -1.  1.  3.]"


def test_readme_client_snippet_runs_against_the_example_repository():
    (snippet,) = [b for b in _python_blocks(README) if "httpclient.InferenceServerClient" in b]
    with NaiadProcess(EXAMPLES) as server:
        code = snippet.replace('"localhost:8000"', f'"{server.http_url}"')
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["[5. 5. 5. 5.] [-3. -1.  1.  3.]",
                                       "[b'HELLO' b'NA\\xc3\\x8fVE']"]


def test_missing_backend_hint_works_from_a_clone():
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from naiad.backends import registry\n"
            "try:\n"
            "    registry.get_backend('onnxruntime')\n"
            "except Exception as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "backend 'onnxruntime' is not available" in out
    assert "pip install -e '.[onnx]' in naiad's folder" in out
    assert re.search(r"pip install 'onnxruntime>=[\d.]+'", out), out


def _without_uvicorn(tmp_path) -> dict:
    """An environment in which ``import uvicorn`` fails, as where it is not installed."""
    blocker = tmp_path / "blocker" / "uvicorn"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named uvicorn')\n")
    return {"PYTHONPATH": str(blocker.parent)}


def _add_sub(url: str) -> list:
    client = httpclient.InferenceServerClient(url)
    a = np.arange(4, dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [4], "FP32"),
              httpclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    return client.infer("add_sub", inputs).as_numpy("OUTPUT0").tolist()


def test_uvicorn_is_needed_only_when_asked_for(tmp_path, repo):
    copy_example(repo, "add_sub")
    env = _without_uvicorn(tmp_path)
    with NaiadProcess(repo, env=env) as server:
        assert _add_sub(server.http_url) == [0, 2, 4, 6]
    server = NaiadProcess(repo, env={**env, "NAIAD_HTTP_SERVER": "uvicorn"}, wait="none")
    server.start()
    try:
        assert server.proc.wait(timeout=60) != 0
        out = server.output()
        assert "NAIAD_HTTP_SERVER=uvicorn needs uvicorn: pip install -e '.[uvicorn]'" in out, out
    finally:
        server.stop()


def test_uvicorn_serves_when_asked_for(repo):
    copy_example(repo, "add_sub")
    with NaiadProcess(repo, env={"NAIAD_HTTP_SERVER": "uvicorn"}) as server:
        assert _add_sub(server.http_url) == [0, 2, 4, 6]


def test_help_shows_every_default():
    text = subprocess.run([sys.executable, "-m", "naiad", "--help"], capture_output=True,
                          text=True, timeout=60, check=True, env={"COLUMNS": "1000"}).stdout
    lines: dict[str, str] = {}  # flag -> its help, continuation lines joined
    flag = ""
    for line in text.split("options:", 1)[1].splitlines():
        words = line.split()
        if words and words[0].startswith("-"):
            flag = words[0].rstrip(",")
            lines[flag] = " ".join(words)
        elif words and flag:
            lines[flag] += " " + " ".join(words)
    for entry in cli._FLAGS:
        assert "(default:" in lines[entry[0]], lines[entry[0]]
    assert lines["--http-port"].endswith("HTTP port. (default: 8000)")
    assert lines["--allow-http"].endswith("(default: true)")
    assert lines["--reuse-http-port"].endswith("(default: false)")
    assert lines["--log-file"].endswith("(default: none)")


def test_ocr_example_has_its_own_extra_and_the_readmes_commands():
    pyproject = (ROOT / "pyproject.toml").read_text()
    ocr = re.search(r"^ocr = \[(.*?)\]", pyproject, re.S | re.M).group(1)
    for package in ("rapidocr-onnxruntime", "onnxruntime", "tritonclient"):
        assert package in ocr, package
    text = (ROOT / "examples" / "ocr" / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)```", text, re.S)[0]
    assert ".venv/bin/pip install -e '.[ocr]'" in commands
    for line in commands.strip().splitlines():
        assert line.startswith(".venv/bin/"), line  # the main README's style
