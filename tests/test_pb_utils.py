"""triton_python_backend_utils as naiad provides it, used outside a server."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest

import triton_python_backend_utils as pb_utils
from naiad.backends.python import dlpack
from naiad.core.tensor_bytes import bf16_bits_to_float, float_to_bf16_bits


def test_module_name_resolves_to_naiads_implementation():
    from naiad.backends.python import pb_utils as ours

    assert pb_utils is ours


def test_tensor_dtype_mapping_and_accessors():
    t = pb_utils.Tensor("X", np.arange(6, dtype=np.int16).reshape(2, 3))
    assert t.name() == "X"
    assert t.shape() == [2, 3]
    assert t.triton_dtype() == pb_utils.numpy_to_triton_type(np.int16) == 7
    assert pb_utils.triton_to_numpy_type(7) is np.int16
    assert pb_utils.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert t.is_cpu()


def test_string_arrays_become_bytes_tensors():
    t = pb_utils.Tensor("S", np.array(["héllo", "x"]))
    assert t.as_numpy().dtype == np.object_
    assert list(t.as_numpy()) == ["héllo".encode(), b"x"]


def test_byte_tensor_serialization_roundtrip():
    arr = np.array([b"a", b"", "ü".encode(), b"\x00z"], dtype=np.object_)
    flat = pb_utils.serialize_byte_tensor(arr)
    assert flat.dtype == np.uint8
    back = pb_utils.deserialize_bytes_tensor(flat.tobytes())
    assert list(back) == list(arr)


def test_dlpack_roundtrip_keeps_dtype_and_values():
    src = pb_utils.Tensor("A", np.arange(12, dtype=np.float32).reshape(3, 4))
    back = pb_utils.Tensor.from_dlpack("B", src.to_dlpack())
    np.testing.assert_array_equal(back.as_numpy(), src.as_numpy())
    # consumers that speak the protocol take the tensor itself
    np.testing.assert_array_equal(np.from_dlpack(src), src.as_numpy())


def test_bf16_dlpack_without_torch_and_without_leaks():
    bits = float_to_bf16_bits(np.array([[1.5, -2.0], [0.25, 8.0]], np.float32))
    t = pb_utils.Tensor._wrap("X", "BF16", bits)
    with pytest.raises(pb_utils.TritonModelException):
        t.as_numpy()  # as in Triton: numpy has no bfloat16
    back = pb_utils.Tensor.from_dlpack("Y", t.to_dlpack())
    assert back.triton_dtype() == 14
    np.testing.assert_array_equal(bf16_bits_to_float(back._array), [[1.5, -2.0], [0.25, 8.0]])
    for _ in range(200):
        capsule = t.to_dlpack()
        del capsule  # never consumed: the capsule's destructor frees the export
    gc.collect()
    assert len(dlpack._alive) == 0


def test_model_config_auto_complete_helpers_validate_like_triton():
    cfg = pb_utils.ModelConfig(json.dumps({"name": "m", "max_batch_size": 0, "input": [],
                                           "output": []}))
    cfg.set_max_batch_size(8)
    cfg.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [4]})
    cfg.add_output({"name": "OUT", "data_type": "TYPE_FP32", "dims": [4]})
    cfg.set_dynamic_batching()
    cfg.set_model_transaction_policy({"decoupled": False})
    d = cfg.as_dict()
    assert d["max_batch_size"] == 8 and "dynamic_batching" in d
    with pytest.raises(ValueError, match="missing 'dims'"):
        cfg.add_input({"name": "X", "data_type": "TYPE_FP32"})
    with pytest.raises(ValueError, match="expects datatype TYPE_FP32"):
        cfg.add_input({"name": "IN", "data_type": "TYPE_INT32", "dims": [4]})
    with pytest.raises(ValueError, match="max_batch_size"):
        cfg.set_max_batch_size(2)


def test_inference_response_and_error_accessors():
    err = pb_utils.TritonError("bad input", pb_utils.TritonError.INVALID_ARG)
    resp = pb_utils.InferenceResponse(error=err)
    assert resp.has_error() and resp.error().message() == "bad input"
    assert resp.error().code() == pb_utils.TritonError.INVALID_ARG
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.InferenceResponse(output_tensors="not a list")
