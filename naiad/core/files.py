"""Sizes of what lies on disk (the layers above share this)."""

from __future__ import annotations

import os


def folder_bytes(folder: str) -> int:
    """The total size of the files under ``folder`` (0 for a folder that is not there)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass  # gone meanwhile
    return total
