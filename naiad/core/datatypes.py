"""The one datatype table: wire names, config enum names and numpy dtypes.

Wire datatypes are the KServe v2 strings ("FP32", "BYTES", ...). Config
datatypes are ModelConfig's ``DataType`` enum names ("TYPE_FP32"; "TYPE_STRING"
is the config's name for BYTES). In the core every tensor is a numpy array;
BYTES tensors are object arrays of ``bytes`` and BF16 tensors carry their raw
16-bit patterns in a ``uint16`` array (numpy has no bfloat16), which is why a
core tensor always travels with its wire datatype.
"""

from __future__ import annotations

import numpy as np

# wire name -> (numpy dtype, element byte size; 0 for variable-size BYTES)
_TABLE: dict[str, tuple[np.dtype, int]] = {
    "BOOL": (np.dtype(np.bool_), 1),
    "UINT8": (np.dtype(np.uint8), 1),
    "UINT16": (np.dtype(np.uint16), 2),
    "UINT32": (np.dtype(np.uint32), 4),
    "UINT64": (np.dtype(np.uint64), 8),
    "INT8": (np.dtype(np.int8), 1),
    "INT16": (np.dtype(np.int16), 2),
    "INT32": (np.dtype(np.int32), 4),
    "INT64": (np.dtype(np.int64), 8),
    "FP16": (np.dtype(np.float16), 2),
    "FP32": (np.dtype(np.float32), 4),
    "FP64": (np.dtype(np.float64), 8),
    "BF16": (np.dtype(np.uint16), 2),
    "BYTES": (np.dtype(np.object_), 0),
}

# Numpy dtypes in the little-endian byte order used on the wire.
WIRE_NUMPY: dict[str, np.dtype] = {
    name: (dt.newbyteorder("<") if dt.itemsize > 1 and dt.kind in "uif" else dt)
    for name, (dt, _) in _TABLE.items()
}

ELEMENT_SIZE: dict[str, int] = {name: size for name, (_, size) in _TABLE.items()}

_CONFIG_TO_WIRE = {f"TYPE_{name}": name for name in _TABLE if name != "BYTES"}
_CONFIG_TO_WIRE["TYPE_STRING"] = "BYTES"
_WIRE_TO_CONFIG = {wire: cfg for cfg, wire in _CONFIG_TO_WIRE.items()}

# numpy kind/size -> wire name, for outputs whose config does not say
_NUMPY_TO_WIRE: dict[np.dtype, str] = {}
for _name, (_dt, _) in _TABLE.items():
    if _name not in ("BF16",):
        _NUMPY_TO_WIRE.setdefault(_dt, _name)


def config_to_wire(config_type: str) -> str:
    """'TYPE_FP32' -> 'FP32'; 'TYPE_STRING' -> 'BYTES'. Unknown -> ''."""
    return _CONFIG_TO_WIRE.get(config_type, "")


def wire_to_config(wire: str) -> str:
    """'FP32' -> 'TYPE_FP32'; 'BYTES' -> 'TYPE_STRING'. Unknown -> 'TYPE_INVALID'."""
    return _WIRE_TO_CONFIG.get(wire, "TYPE_INVALID")


def numpy_dtype(wire: str) -> np.dtype:
    """The numpy dtype a core tensor of this wire datatype uses."""
    return _TABLE[wire][0]


def wire_from_numpy(dtype: np.dtype) -> str:
    """The wire datatype of a numpy dtype ('' if there is none).

    Strings (``np.str_``/``np.bytes_``) and object arrays map to BYTES.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    if dtype.byteorder == ">":
        dtype = dtype.newbyteorder("=")
    return _NUMPY_TO_WIRE.get(dtype, "")


def enum_name(message, field: str) -> str:
    """The name of an enum field's value ('TYPE_FP32' for a config's ``data_type``).

    Read from the message's own descriptor, so the core needs no generated module.
    """
    enum = message.DESCRIPTOR.fields_by_name[field].enum_type
    value = enum.values_by_number.get(getattr(message, field))
    return value.name if value is not None else ""
