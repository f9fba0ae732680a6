#!/usr/bin/env python3
"""Print the command-line flag table for README.md from the parser itself.

    python scripts/flag_table.py

tests/test_readme.py checks that every flag the parser accepts is in the
README, so the table cannot silently fall behind the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from naiad import cli  # noqa: E402


def rows() -> list[str]:
    out = [
        "| flag | default | meaning |",
        "|---|---|---|",
        "| `--model-repository` (repeatable; alias `--model-store`) | | Model repository path or "
        "URL (`s3://`, `gs://`, `as://`). |",
        "| `--disable-auto-complete-config` | | Do not complete configs from the model files. |",
    ]
    for flag, _dest, _typ, default, help_ in cli._FLAGS:
        if isinstance(default, bool):
            default = str(default).lower()
        shown = f"`{default}`" if default not in ("", None) else ""
        note = ""
        if any(flag in msg for _, msg in cli.UNBUILT):
            note = " *(accepted; refused when set: not implemented)*"
        out.append(f"| `{flag}` | {shown} | {help_}{note} |")
    for flag, _dest, _typ, help_ in cli._LISTS:
        note = ""
        if any(flag in msg for _, msg in cli.UNBUILT):
            note = " *(accepted; refused when set: not implemented)*"
        out.append(f"| `{flag}` (repeatable) | | {help_}{note} |")
    return out


if __name__ == "__main__":
    print("\n".join(rows()))
