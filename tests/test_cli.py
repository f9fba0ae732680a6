"""The ``naiad`` command line: tritonserver's flags, forms, errors and output.

TRITON_FLAGS is the option list of ``tritonserver --help`` (2.51). If the
reference server is unpacked (/work/shared/reference/triton.sh setup), a test
also reads its ``--help`` and checks the list is still exact.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import ROOT, NaiadProcess, write_model

from naiad import cli

# flag -> value kind, as tritonserver 2.51 --help prints them
TRITON_FLAGS: dict[str, str] = {
    "--help": "", "--id": "<string>", "--exit-timeout-secs": "<integer>",
    "--log-verbose": "<integer>", "--log-info": "<boolean>", "--log-warning": "<boolean>",
    "--log-error": "<boolean>", "--log-format": "<string>", "--log-file": "<string>",
    "--model-store": "<string>", "--model-repository": "<string>",
    "--exit-on-error": "<boolean>", "--disable-auto-complete-config": "",
    "--strict-readiness": "<boolean>", "--model-control-mode": "<string>",
    "--repository-poll-secs": "<integer>", "--load-model": "<string>",
    "--model-config-name": "<string>", "--model-load-thread-count": "<integer>",
    "--model-load-retry-count": "<integer>", "--model-namespacing": "<boolean>",
    "--enable-peer-access": "<boolean>", "--allow-http": "<boolean>",
    "--http-address": "<string>", "--http-port": "<integer>", "--reuse-http-port": "<boolean>",
    "--http-header-forward-pattern": "<string>", "--http-thread-count": "<integer>",
    "--http-restricted-api": "<<string>:<string>=<string>>", "--allow-grpc": "<boolean>",
    "--grpc-address": "<string>", "--grpc-port": "<integer>", "--reuse-grpc-port": "<boolean>",
    "--grpc-header-forward-pattern": "<string>",
    "--grpc-infer-allocation-pool-size": "<integer>", "--grpc-use-ssl": "<boolean>",
    "--grpc-use-ssl-mutual": "<boolean>", "--grpc-server-cert": "<string>",
    "--grpc-server-key": "<string>", "--grpc-root-cert": "<string>",
    "--grpc-infer-response-compression-level": "<string>",
    "--grpc-keepalive-time": "<integer>", "--grpc-keepalive-timeout": "<integer>",
    "--grpc-keepalive-permit-without-calls": "<boolean>",
    "--grpc-http2-max-pings-without-data": "<integer>",
    "--grpc-http2-min-recv-ping-interval-without-data": "<integer>",
    "--grpc-http2-max-ping-strikes": "<integer>", "--grpc-max-connection-age": "<integer>",
    "--grpc-max-connection-age-grace": "<integer>",
    "--grpc-restricted-protocol": "<<string>:<string>=<string>>",
    "--allow-sagemaker": "<boolean>", "--sagemaker-port": "<integer>",
    "--sagemaker-safe-port-range": "<<integer>-<integer>>",
    "--sagemaker-thread-count": "<integer>", "--allow-vertex-ai": "<boolean>",
    "--vertex-ai-port": "<integer>", "--vertex-ai-thread-count": "<integer>",
    "--vertex-ai-default-model": "<string>", "--allow-metrics": "<boolean>",
    "--allow-gpu-metrics": "<boolean>", "--allow-cpu-metrics": "<boolean>",
    "--metrics-address": "<string>", "--metrics-port": "<integer>",
    "--metrics-interval-ms": "<float>", "--metrics-config": "<<string>=<string>>",
    "--trace-config": "<<string>,<string>=<string>>", "--backend-directory": "<string>",
    "--backend-config": "<<string>,<string>=<string>>", "--repoagent-directory": "<string>",
    "--cache-config": "<<string>,<string>=<string>>", "--cache-directory": "<string>",
    "--rate-limit": "<string>", "--rate-limit-resource": "<<string>:<integer>:<integer>>",
    "--pinned-memory-pool-byte-size": "<integer>",
    "--cuda-memory-pool-byte-size": "<<integer>:<integer>>",
    "--cuda-virtual-address-size": "<<integer>:<integer>>",
    "--min-supported-compute-capability": "<float>",
    "--buffer-manager-thread-count": "<integer>",
    "--host-policy": "<<string>,<string>=<string>>",
    "--model-load-gpu-limit": "<<device_id>:<fraction>>", "--strict-model-config": "<boolean>",
    "--response-cache-byte-size": "<integer>", "--trace-file": "<string>",
    "--trace-level": "<string>", "--trace-rate": "<integer>", "--trace-count": "<integer>",
    "--trace-log-frequency": "<integer>",
}

SAMPLE_BY_KIND = {
    "<string>": "x", "<integer>": "7", "<boolean>": "false", "<float>": "1.5",
    "<<string>:<string>=<string>>": "health:key=value",
    "<<integer>-<integer>>": "8000-8010",
    "<<string>=<string>>": "summary_latencies=true",
    "<<string>,<string>=<string>>": "python,key=value",
    "<<string>:<integer>:<integer>>": "R1:10:0",
    "<<integer>:<integer>>": "0:1024",
    "<<device_id>:<fraction>>": "0:0.5",
}
# string flags whose values are checked
SAMPLE_BY_FLAG = {"--model-control-mode": "explicit", "--log-format": "ISO8601",
                  "--rate-limit": "off", "--grpc-infer-response-compression-level": "low"}

REFERENCE = Path.home() / ".cache/naiad-reference/triton"


def naiad(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "naiad", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=str(ROOT))


def opts(*args: str):
    return cli.options_from_args(["--model-repository=/models", *args])


# ---------------------------------------------------------------------------
# the flags
# ---------------------------------------------------------------------------


def test_every_tritonserver_flag_is_accepted():
    parser_flags = {s for a in cli.build_parser()._actions for s in a.option_strings}
    assert set(TRITON_FLAGS) - parser_flags == set()
    for flag, kind in TRITON_FLAGS.items():
        if flag in ("--help", "--model-store", "--model-repository"):
            continue
        if kind == "":
            opts(flag)
            continue
        value = SAMPLE_BY_FLAG.get(flag, SAMPLE_BY_KIND[kind])
        needs = ["--model-control-mode=explicit"] if flag == "--load-model" else []
        opts(*needs, f"{flag}={value}")
        opts(*needs, flag, value)


def test_help_lists_every_flag():
    result = naiad("--help")
    assert result.returncode == 0
    for flag in TRITON_FLAGS:
        assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", result.stdout), flag


@pytest.mark.skipif(not (REFERENCE / "bin/tritonserver").exists(),
                    reason="reference tritonserver not unpacked")
def test_flag_list_is_the_reference_servers():
    result = subprocess.run([str(REFERENCE / "bin/tritonserver"), "--help"], capture_output=True,
                            text=True, timeout=30,
                            env=dict(os.environ, LD_LIBRARY_PATH=str(REFERENCE / "libs")))
    found = dict(re.findall(r"^  (--[a-z0-9-]+)(?: (<.*>))?$", result.stdout + result.stderr,
                            re.M))
    assert found == TRITON_FLAGS


def test_flag_forms_and_values():
    o = opts("--http-port", "1234", "--grpc-port=2345", "--id", "node-7", "--log-verbose=2",
             "--metrics-interval-ms", "500", "--model-control-mode=explicit",
             "--load-model=a", "--load-model", "b", "--backend-config=python,shm=1",
             "--backend-config", "default-max-batch-size=4")
    assert (o.http_port, o.grpc_port, o.server_id, o.log_verbose) == (1234, 2345, "node-7", 2)
    assert o.metrics_interval_ms == 500.0
    assert (o.model_control_mode, o.load_models) == ("explicit", ["a", "b"])
    assert o.backend_config == {"python": {"shm": "1"}, "": {"default-max-batch-size": "4"}}
    o = cli.options_from_args(["--model-repository", "/a", "--model-store=/b",
                               "--model-repository=/c"])
    assert o.model_repositories == ["/a", "/b", "/c"]


@pytest.mark.parametrize("text, value", [
    ("true", True), ("false", False), ("1", True), ("0", False), ("on", True), ("off", False),
    ("TRUE", True), ("False", False),
])
def test_booleans(text, value):
    assert opts(f"--exit-on-error={text}").exit_on_error is value
    assert opts("--allow-grpc", text).allow_grpc is value


@pytest.mark.parametrize("text", ["yes", "no", "2", ""])
def test_bad_boolean(text):
    # tritonserver: "invalid value for bool option: yes"
    with pytest.raises(cli.CliError, match=f"invalid value for bool option: {text}"):
        opts(f"--strict-readiness={text}")


def test_auto_complete_switches():
    assert opts().auto_complete_config is True
    assert opts("--disable-auto-complete-config").auto_complete_config is False
    assert opts("--strict-model-config=true").auto_complete_config is False
    assert opts("--strict-model-config=false").auto_complete_config is True


@pytest.mark.parametrize("args, message", [
    (["--http-port=abc"], "--http-port: invalid int value: 'abc'"),
    (["--http-port"], "--http-port: expected one argument"),
    (["--model-control-mode=bogus"], "unexpected value for --model-control-mode: 'bogus'"),
    (["--log-format=xml"], "unexpected value for --log-format: 'xml'"),
    (["--rate-limit=sometimes"], "unexpected value for --rate-limit: 'sometimes'"),
    (["--http-port=70000"], "--http-port must be in [0, 65535]"),
    (["--backend-config=novalue"], "expected <group>,<setting>=<value>"),
    # tritonserver's own messages
    (["--load-model=a"], "Use of '--load-model' requires setting '--model-control-mode=explicit'"),
    (["--model-control-mode=explicit", "--load-model=*", "--load-model=a"],
     "Wildcard model name '*' must be the ONLY startup model if specified at all."),
])
def test_bad_values(args, message):
    with pytest.raises(cli.CliError) as info:
        opts(*args)
    assert message in str(info.value)


def test_deprecated_flags_fold_into_their_successors():
    o = opts("--trace-file=/tmp/t.json", "--trace-rate=10", "--response-cache-byte-size=1024")
    assert o.trace_config == {"triton": {"file": "/tmp/t.json"}, "": {"rate": "10"}}
    assert o.cache_config == {"local": {"size": "1024"}}


# ---------------------------------------------------------------------------
# errors: one line on stderr, non-zero exit, no traceback
# ---------------------------------------------------------------------------


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_unknown_flag():
    line = _one_line_error(naiad("--model-repository=/tmp", "--no-such-flag=1"))
    assert "--no-such-flag=1" in line
    assert "unrecognized" in line


def test_no_repository():
    line = _one_line_error(naiad())
    assert line == "error: --model-repository must be specified"


def test_missing_repository(tmp_path):
    missing = tmp_path / "nope"
    line = _one_line_error(naiad(f"--model-repository={missing}", "--http-port=0",
                                 "--grpc-port=0", "--metrics-port=0"))
    # tritonserver: "error: creating server: Internal - failed to stat file <path>"
    assert line.startswith("error: creating server: ")
    assert f"failed to stat file {missing}" in line


def test_busy_port(repo):
    write_model(repo, "m", 'name: "m"\nbackend: "python"\n',
                {"model.py": "class TritonPythonModel:\n    def execute(self, r):\n"
                             "        return []\n"})
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = NaiadProcess(repo, f"--http-port={port}", wait="none").start()
        try:
            code = server.proc.wait(timeout=20)
            out = server.output()
        finally:
            server.stop()
    assert code != 0
    assert "Traceback" not in out
    last = out.strip().splitlines()[-1]
    # tritonserver: "failed to start HTTP service: Unavailable - Socket '127.0.0.1:P' already
    # in use"
    assert last.startswith("error: failed to start HTTPService: ")
    assert f"127.0.0.1:{port}" in last
    assert "[Errno" not in last


def test_unbuilt_feature_is_refused(capsys):
    """Flags of features not built yet are accepted by the parser, then refused.

    UNBUILT_FLAG names one such feature; when it gets built, pick another from
    cli.UNBUILT (or drop the test when that list is empty).
    """
    flag = "--allow-sagemaker=true"
    options = opts(flag)
    messages = [m for predicate, m in cli.UNBUILT if predicate(options)]
    if not messages:
        pytest.skip(f"{flag} is built now: choose another flag from cli.UNBUILT")
    assert cli.main(["--model-repository=/tmp", flag]) != 0
    err = capsys.readouterr().err
    assert err == f"error: {messages[0]}\n"
    assert "not supported yet" in err or "not served" in err


def test_unbuilt_mechanism(monkeypatch, capsys):
    monkeypatch.setattr(cli, "UNBUILT", [(lambda o: o.server_id == "x", "--id=x: not built")])
    assert cli.main(["--model-repository=/nonexistent", "--id=x"]) == 2
    assert capsys.readouterr().err == "error: --id=x: not built\n"


# ---------------------------------------------------------------------------
# startup output and logging
# ---------------------------------------------------------------------------

VERBOSE_MODEL = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        pb_utils.Logger.log_verbose("verbose hello from " + args["model_name"])
        pb_utils.Logger.log_info("info hello from " + args["model_name"])
        pb_utils.Logger.log_warn("warning hello from " + args["model_name"])

    def execute(self, requests):
        return [None for _ in requests]
"""


@pytest.fixture
def chatty_repo(repo):
    write_model(repo, "chatty", 'name: "chatty"\nbackend: "python"\n',
                {"model.py": VERBOSE_MODEL})
    return repo


def test_startup_output(chatty_repo):
    with NaiadProcess(chatty_repo, "--id=my-node") as server:
        out = server.output()
        assert re.search(r"\| Model\s+\| Version \| Status \|\n\+[-+]+\+\n"
                         r"\| chatty\s+\| 1\s+\| READY\s+\|", out)
        assert re.search(r"\| Option\s+\| Value", out)
        assert re.search(r"\| server_id\s+\| my-node", out)
        # Triton 2.51: "I1206 19:22:12.646915 19209 http_server.cc:4713] "Started HTTPService ...""
        assert re.search(rf'^I\d{{4}} \d\d:\d\d:\d\d\.\d{{6}} \d+ \w+\.py:\d+\] "Started HTTPService at '
                         rf'127\.0\.0\.1:{server.http_port}"$', out, re.M)
        assert "info hello from chatty" in out
        assert "verbose hello" not in out
        assert requests.get(server.base + "/v2", timeout=5).json()["name"] == "my-node"


def test_log_format_iso8601(chatty_repo):
    with NaiadProcess(chatty_repo, "--log-format=ISO8601") as server:
        out = server.output()
    started = [line for line in out.splitlines() if "Started HTTPService" in line]
    # tritonserver: "2026-11-21T23:22:38Z I 26623 file.cc:480] message"
    assert re.match(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ I \d+ \S+:\d+\] "Started HTTPService',
                    started[0])
    warning = [line for line in out.splitlines() if "warning hello" in line]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ W \d+ ", warning[0])


def test_log_verbose(chatty_repo):
    with NaiadProcess(chatty_repo, "--log-verbose=1") as server:
        out = server.output()
    # verbose messages carry the I prefix, as in tritonserver
    assert re.search(r'^I\d{4} .*"verbose hello from chatty"$', out, re.M)


def test_log_info_false(chatty_repo):
    with NaiadProcess(chatty_repo, "--log-info=false") as server:
        out = server.output()
    assert "info hello" not in out and "Started HTTPService" not in out
    assert "| Model" not in out
    assert not re.search(r"^I\d{4} ", out, re.M)
    assert re.search(r'^W\d{4} .*"warning hello from chatty"$', out, re.M)


def test_log_file(chatty_repo, tmp_path):
    log_file = tmp_path / "server.log"
    with NaiadProcess(chatty_repo, f"--log-file={log_file}") as server:
        out = server.output()
    assert "Started HTTPService" not in out
    assert "Started HTTPService" in log_file.read_text()
