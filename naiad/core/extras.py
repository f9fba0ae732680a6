"""How to install one of naiad's optional extras, in words that work from a clone.

naiad is installed from its clone (``pip install -e '.[onnx]'``), not from a
package index, so ``pip install 'naiad[onnx]'`` alone would fail for most
users. A hint names the clone command and, from the installed metadata, the
extra's own packages (which install anywhere).
"""

from __future__ import annotations

import re
from importlib import metadata


def extra_requirements(extra: str) -> list[str]:
    """The requirements (``name>=version``) that ``naiad[extra]`` adds."""
    try:
        requires = metadata.requires("naiad") or []
    except metadata.PackageNotFoundError:
        return []
    marker = re.compile(r"""extra\s*==\s*["']""" + re.escape(extra) + r"""["']""")
    out = []
    for req in requires:
        spec, _, env = req.partition(";")
        if marker.search(env):
            out.append(spec.strip().replace(" ", ""))
    return out


def install_hint(extra: str) -> str:
    """``pip install -e '.[extra]'`` in naiad's clone, or the extra's packages themselves."""
    text = f"pip install -e '.[{extra}]' in naiad's folder"
    packages = extra_requirements(extra)
    if packages:
        text += ", or: pip install " + " ".join(f"'{p}'" for p in packages)
    return text
