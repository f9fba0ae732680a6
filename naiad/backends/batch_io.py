"""Ragged batching: ``allow_ragged_batch`` inputs, ``batch_input`` and ``batch_output``.

As Triton defines them (ragged_batching.md, model_config.proto):

* an input with ``allow_ragged_batch`` may differ in shape between the
  requests of a batch; backends that build one tensor per input (onnxruntime)
  feed the model the requests' elements concatenated into one 1-D tensor;
* ``batch_input`` entries are tensors the server computes from the formed
  batch and feeds the model under each ``target_name``, from the shapes of
  ``source_input`` in each request: BATCH_ELEMENT_COUNT ([requests]: each
  request's element count), BATCH_ACCUMULATED_ELEMENT_COUNT ([requests]:
  running totals), BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO ([requests + 1]:
  the same with a leading 0), BATCH_MAX_ELEMENT_COUNT_AS_SHAPE ([max count]:
  only the shape matters), BATCH_ITEM_SHAPE ([batch, rank - 1]: each batch
  item's shape without the batch dimension) and BATCH_ITEM_SHAPE_FLATTEN (the
  same, flattened); data type TYPE_INT32 or TYPE_FP32;
* ``batch_output`` BATCH_SCATTER_WITH_INPUT_SHAPE: the output's elements are
  handed back to each request in the shape its ``source_input`` had.

``validate_batch_io`` applies Triton's load-time checks (with its messages);
the onnxruntime backend calls ``BatchIO`` when it assembles a batch. Python
models receive every request's tensors as they came, so for them ragged
inputs only mean that such requests may share a batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from naiad.core.errors import InvalidArgument
from naiad.protocol import model_config_pb2 as mc

if TYPE_CHECKING:
    from naiad.core.types import InferenceRequest

BI = mc.BatchInput
BO = mc.BatchOutput


def validate_batch_io(config: mc.ModelConfig) -> None:
    """Triton's ValidateBatchIO: kinds, data types and names."""
    name = config.name
    inputs = {io.name for io in config.input}
    outputs = {io.name for io in config.output}

    def check_sources(what: str, kind: str, sources) -> None:
        if len(sources) != 1:
            raise InvalidArgument(
                f"batch {what} kind '{kind}' expects 1 source input, got {len(sources)} "
                f"for {name}")
        for source in sources:
            if source not in inputs:
                raise InvalidArgument(f"unknown source input name '{source}' for {name}")

    for bi in config.batch_input:
        check_sources("input", BI.Kind.Name(bi.kind), bi.source_input)
        if bi.data_type not in (mc.TYPE_INT32, mc.TYPE_FP32):
            raise InvalidArgument(
                f"batch input data type must be TYPE_INT32 or TYPE_FP32 for {name}")
    for bo in config.batch_output:
        check_sources("output", BO.Kind.Name(bo.kind), bo.source_input)
        seen: set[str] = set()
        for target in bo.target_name:
            if target not in outputs:
                raise InvalidArgument(f"unknown target output name '{target}' for {name}")
            if target in seen:
                raise InvalidArgument(
                    f"target output name '{target}' can only be specified once for {name}")
            seen.add(target)


class BatchIO:
    """What a backend needs to assemble ragged batches for one model."""

    def __init__(self, config: mc.ModelConfig):
        self.ragged = frozenset(io.name for io in config.input if io.allow_ragged_batch)
        self.batch_inputs = []  # (target name, kind, numpy dtype, source input)
        for bi in config.batch_input:
            dtype = np.float32 if bi.data_type == mc.TYPE_FP32 else np.int32
            for target in bi.target_name:
                self.batch_inputs.append((target, bi.kind, dtype, bi.source_input[0]))
        self.scatter = {target: bo.source_input[0] for bo in config.batch_output
                        for target in bo.target_name}

    @property
    def active(self) -> bool:
        return bool(self.ragged or self.batch_inputs or self.scatter)

    @staticmethod
    def concat_ragged(requests: "list[InferenceRequest]", name: str) -> np.ndarray:
        """A ragged input of a batch: every request's elements, in order, as one 1-D tensor."""
        parts = [r.inputs[name].data.reshape(-1) for r in requests]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def batch_input_arrays(self, requests: "list[InferenceRequest]") -> dict[str, np.ndarray]:
        out = {}
        for target, kind, dtype, source in self.batch_inputs:
            shapes = [r.inputs[source].data.shape for r in requests]
            counts = [int(np.prod(s)) for s in shapes]
            if kind == BI.BATCH_ELEMENT_COUNT:
                arr = np.array(counts, dtype=dtype)
            elif kind == BI.BATCH_ACCUMULATED_ELEMENT_COUNT:
                arr = np.cumsum(counts).astype(dtype)
            elif kind == BI.BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO:
                arr = np.concatenate([[0], np.cumsum(counts)]).astype(dtype)
            elif kind == BI.BATCH_MAX_ELEMENT_COUNT_AS_SHAPE:
                arr = np.zeros(max(counts), dtype=dtype)
            else:  # BATCH_ITEM_SHAPE / BATCH_ITEM_SHAPE_FLATTEN
                rows = [list(s[1:]) for s in shapes for _ in range(s[0] if s else 1)]
                rank = max((len(r) for r in rows), default=0)
                arr = np.array(rows, dtype=dtype).reshape(len(rows), rank)
                if kind == BI.BATCH_ITEM_SHAPE_FLATTEN:
                    arr = arr.reshape(-1)
            out[target] = arr
        return out

    def scatter_output(self, name: str, array: np.ndarray,
                       requests: "list[InferenceRequest]") -> list[np.ndarray]:
        """A BATCH_SCATTER_WITH_INPUT_SHAPE output, cut into each request's source shape."""
        source = self.scatter[name]
        flat = array.reshape(-1)
        pieces = []
        offset = 0
        for r in requests:
            shape = r.inputs[source].data.shape
            count = int(np.prod(shape))
            if offset + count > flat.size:
                raise InvalidArgument(
                    f"batch output '{name}' has {flat.size} elements, fewer than the "
                    f"{offset + count} its source input '{source}' needs")
            pieces.append(flat[offset:offset + count].reshape(shape))
            offset += count
        return pieces
