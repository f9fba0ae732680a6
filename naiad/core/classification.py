"""The classification extension: an output's top-k as "score:index[:label]" strings.

Scores print as C's ``std::to_string`` does (six decimals for floating point,
plain digits for integers), so clients that parse Triton's strings parse ours.
"""

from __future__ import annotations

import numpy as np

from naiad.core.errors import InvalidArgument
from naiad.core.types import Tensor


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):f}"
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    return str(int(value))


# output datatypes that have no numeric order to rank
UNSUPPORTED = ("BYTES", "BF16")


def unsupported_message(name: str, datatype: str) -> str:
    return (f"class result not available for output '{name}' due to unsupported type "
            f"'{datatype}'")


def top_k(tensor: Tensor, k: int, labels: list[str] | None, batched: bool) -> Tensor:
    if tensor.datatype in UNSUPPORTED:
        raise InvalidArgument(unsupported_message(tensor.name, tensor.datatype))
    data = tensor.data
    rows = data.reshape(data.shape[0], -1) if batched and data.ndim > 0 else data.reshape(1, -1)
    n = rows.shape[1]
    k = min(k, n)
    out = np.empty((rows.shape[0], k), dtype=np.object_)
    for r, row in enumerate(rows):
        # stable descending order: ties keep the lower index first, like std::sort on pairs
        order = np.argsort(-row.astype(np.float64), kind="stable")[:k]
        for j, idx in enumerate(order):
            text = f"{_fmt(row[idx])}:{int(idx)}"
            if labels is not None and idx < len(labels):
                text += f":{labels[idx]}"
            out[r, j] = text.encode("utf-8")
    if not batched:
        out = out.reshape(k)
    return Tensor(tensor.name, "BYTES", out)
