"""Unit tests of the HTTP infer codec, including its parsed-header memory."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from naiad.core.errors import InvalidArgument
from naiad.protocol import http_codec


def binary_body(values_a, values_b, extra_header=None, outputs=True):
    header = {"inputs": [
        {"name": "A", "shape": [len(values_a)], "datatype": "FP32",
         "parameters": {"binary_data_size": 4 * len(values_a)}},
        {"name": "B", "shape": [len(values_b)], "datatype": "INT32",
         "parameters": {"binary_data_size": 4 * len(values_b)}},
    ]}
    if outputs:
        header["outputs"] = [{"name": "C", "parameters": {"binary_data": True}}]
    header.update(extra_header or {})
    head = json.dumps(header).encode()
    data = struct.pack(f"<{len(values_a)}f", *values_a) + struct.pack(f"<{len(values_b)}i",
                                                                      *values_b)
    return bytearray(head + data), len(head)


def decode(body, hl):
    return http_codec.decode_infer_request(body, hl, "m", -1)


def test_repeated_header_decodes_each_body_correctly():
    http_codec._TEMPLATES.clear()
    for i in range(3):
        body, hl = binary_body([i, i + 1.5], [i * 10, -i, 7])
        req, binary_default = decode(body, hl)
        np.testing.assert_array_equal(req.inputs["A"].data, np.float32([i, i + 1.5]))
        np.testing.assert_array_equal(req.inputs["B"].data, np.int32([i * 10, -i, 7]))
        assert req.inputs["B"].datatype == "INT32"
        assert list(req.requested_outputs) == ["C"]
        assert req.requested_outputs["C"].parameters["binary_data"] is True
        assert binary_default is False
    assert len(http_codec._TEMPLATES) == 1


def test_remembered_header_still_refuses_a_body_of_the_wrong_size():
    http_codec._TEMPLATES.clear()
    body, hl = binary_body([1, 2], [3, 4, 5])
    decode(body, hl)
    with pytest.raises(InvalidArgument, match="unexpected additional input data"):
        decode(body + b"xx", hl)
    with pytest.raises(InvalidArgument, match="unexpected size for input 'B'"):
        decode(body[:-4], hl)


def test_headers_with_an_id_or_parameters_are_not_remembered():
    http_codec._TEMPLATES.clear()
    body, hl = binary_body([1], [2], {"id": "req-1"})
    req, _ = decode(body, hl)
    assert req.id == "req-1"
    body, hl = binary_body([1], [2], {"parameters": {"priority": 2}})
    req, _ = decode(body, hl)
    assert req.priority == 2
    assert len(http_codec._TEMPLATES) == 0
    body, hl = binary_body([1], [2], {"parameters": {"binary_data_output": True}},
                           outputs=False)
    for _ in range(2):
        req, binary_default = decode(body, hl)
        assert binary_default is True and req.requested_outputs is None
    assert len(http_codec._TEMPLATES) == 1


def test_decoded_binary_inputs_are_writable_views_of_the_body():
    body, hl = binary_body([1, 2], [3, 4])
    for _ in range(2):  # first parse, then from the remembered header
        req, _ = decode(body, hl)
        a = req.inputs["A"].data
        assert a.flags.writeable
        a[0] = 42.0
        assert struct.unpack_from("<f", body, hl)[0] == 42.0
        struct.pack_into("<f", body, hl, 1.0)


def test_requested_outputs_are_not_shared_between_requests():
    http_codec._TEMPLATES.clear()
    body, hl = binary_body([1], [2])
    r1, _ = decode(body, hl)
    r2, _ = decode(body, hl)
    r1.requested_outputs.pop("C")
    assert list(r2.requested_outputs) == ["C"]
