"""The README stays true to the code: its flag table, its commands, its examples."""

from __future__ import annotations

import re
import subprocess
import sys

from naiad import cli
from tests.conftest import EXAMPLES, ROOT

README = (ROOT / "README.md").read_text()


def _fenced_bash_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_every_flag_the_parser_accepts_is_in_the_readme():
    flags = [f[0] for f in cli._FLAGS] + [f[0] for f in cli._LISTS]
    assert len(flags) > 60
    missing = [flag for flag in flags if f"`{flag}`" not in README]
    assert not missing, f"README lacks {missing}: regenerate with scripts/flag_table.py"


def test_flag_table_is_what_the_generator_prints():
    table = README.split("<!-- flag-table:start -->\n")[1].split("\n<!-- flag-table:end -->")[0]
    printed = subprocess.run([sys.executable, str(ROOT / "scripts" / "flag_table.py")],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert table.strip() == printed


def test_ci_runs_the_readme_test_command_verbatim():
    test_lines = [line for line in _fenced_bash_lines() if "pytest" in line]
    assert len(test_lines) == 1
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_lines[0] in ci


def test_run_command_serves_the_bundled_repository():
    run_lines = [line for line in _fenced_bash_lines() if "naiad --model-repository" in line]
    assert run_lines and "examples/model_repository" in run_lines[0]
    listed = set(re.findall(r"^\| `(\w+)` \| (?:python|onnxruntime) \|", README, re.M))
    present = {p.name for p in EXAMPLES.iterdir() if (p / "config.pbtxt").exists()}
    assert listed == present
