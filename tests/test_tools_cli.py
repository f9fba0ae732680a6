"""The sub-command seam of the ``naiad`` command, and the tools' place in the layers."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

from naiad import cli
from tests.conftest import ROOT

# what the tools may never import: the running server's internals
SERVER_INTERNALS = ("naiad.server", "naiad.frontends", "naiad.embedded", "naiad.core.model",
                    "naiad.core.instance", "naiad.repository.manager")


def test_every_sub_command_resolves_to_a_function():
    assert set(cli.SUBCOMMANDS) >= {"perf", "analyze", "validate", "import", "ray"}
    for name, target in cli.SUBCOMMANDS.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_a_registered_sub_command_is_one_line(monkeypatch):
    seen = []
    monkeypatch.setitem(cli.SUBCOMMANDS, "echo", f"{__name__}:_echo")
    monkeypatch.setattr(sys.modules[__name__], "_echo", lambda argv: seen.append(argv) or 7,
                        raising=False)
    assert cli.main(["echo", "a", "--b"]) == 7
    assert seen == [["a", "--b"]]


def test_anything_else_is_the_server_command_line():
    assert cli.run_subcommand(["--model-repository=x"]) is None
    assert cli.run_subcommand([]) is None
    # a flag's value that happens to be a sub-command name is not a sub-command
    assert cli.run_subcommand(["--id", "perf"]) is None


def test_help_names_the_tools_and_each_tool_has_help():
    r = subprocess.run([sys.executable, "-m", "naiad", "--help"], capture_output=True,
                       text=True, cwd=str(ROOT))
    assert r.returncode == 0 and "naiad {perf,analyze,validate,import,ray}" in r.stdout
    for name in ("perf", "analyze", "validate", "import", "ray"):
        r = subprocess.run([sys.executable, "-m", "naiad", name, "--help"],
                           capture_output=True, text=True, cwd=str(ROOT))
        assert r.returncode == 0 and f"naiad {name}" in r.stdout, name


def test_tools_never_import_server_internals():
    offenders = []
    for path in (ROOT / "naiad" / "tools").rglob("*.py"):
        if "templates" in path.parts:  # files copied into repositories, run by the server
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                if any(n == bad or n.startswith(bad + ".") for bad in SERVER_INTERNALS):
                    offenders.append(f"{path.relative_to(ROOT)}: {n}")
    assert not offenders, offenders
