"""DLPack capsules for dtypes numpy cannot export (bfloat16), with ctypes only.

numpy exports and imports DLPack for its own dtypes; BF16 tensors live in
the core as raw uint16 bits, which numpy would label uint16. Triton's
``pb_utils.Tensor.to_dlpack()`` hands out a real bfloat16 capsule (so
``torch.from_dlpack`` sees bfloat16), and ``from_dlpack`` accepts one back;
this module does both without importing torch.
"""

from __future__ import annotations

import ctypes

import numpy as np

_KDL_CPU = 1
_KDL_BFLOAT = 4


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    pass


_Deleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [
    ("dl_tensor", _DLTensor),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", _Deleter),
]

_api = ctypes.pythonapi
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_SetName.restype = ctypes.c_int
_api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]

# exported tensors kept alive until their consumer calls the deleter:
# address of the DLManagedTensor -> (struct, shape array, numpy array)
_alive: dict[int, tuple] = {}


@_Deleter
def _delete(managed_ptr) -> None:
    _alive.pop(ctypes.cast(managed_ptr, ctypes.c_void_p).value, None)


# The destructor gets the dying capsule as a raw pointer: it must not be turned
# into a Python reference (its refcount is already zero).
_CapsuleDestructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_is_valid_raw = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_IsValid", _api))
_get_pointer_raw = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", _api))


@_CapsuleDestructor
def _capsule_destructor(capsule_ptr) -> None:
    # an unconsumed capsule frees its tensor; a consumed one was renamed "used_dltensor"
    if _is_valid_raw(capsule_ptr, b"dltensor"):
        _alive.pop(_get_pointer_raw(capsule_ptr, b"dltensor"), None)


def bf16_capsule(bits: np.ndarray):
    """A "dltensor" capsule labelling a uint16 array's contents as bfloat16."""
    arr = np.ascontiguousarray(bits, dtype=np.uint16)
    shape = (ctypes.c_int64 * max(arr.ndim, 1))(*arr.shape)
    managed = _DLManagedTensor()
    t = managed.dl_tensor
    t.data = arr.ctypes.data if arr.size else None
    t.device = _DLDevice(_KDL_CPU, 0)
    t.ndim = arr.ndim
    t.dtype = _DLDataType(_KDL_BFLOAT, 16, 1)
    t.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
    t.strides = ctypes.POINTER(ctypes.c_int64)()  # NULL: compact row-major
    t.byte_offset = 0
    managed.manager_ctx = None
    managed.deleter = _delete
    address = ctypes.addressof(managed)
    _alive[address] = (managed, shape, arr)
    return _api.PyCapsule_New(address, b"dltensor",
                              ctypes.cast(_capsule_destructor, ctypes.c_void_p))


def read_bf16_capsule(capsule) -> np.ndarray | None:
    """The bits of a bfloat16 CPU capsule as a uint16 array (consuming it); None if not BF16."""
    if not _api.PyCapsule_IsValid(capsule, b"dltensor"):
        return None
    managed = ctypes.cast(_api.PyCapsule_GetPointer(capsule, b"dltensor"),
                          ctypes.POINTER(_DLManagedTensor)).contents
    t = managed.dl_tensor
    if t.dtype.code != _KDL_BFLOAT or t.dtype.bits != 16 or t.dtype.lanes != 1:
        return None
    if t.device.device_type != _KDL_CPU:
        raise ValueError("only CPU DLPack tensors are supported")
    shape = tuple(t.shape[i] for i in range(t.ndim))
    count = int(np.prod(shape)) if shape else 1
    out = np.empty(shape, dtype=np.uint16)
    if count:
        base = t.data + t.byte_offset
        if t.strides:
            strides = tuple(t.strides[i] * 2 for i in range(t.ndim))
            span = sum((d - 1) * s for d, s in zip(shape, strides)) + 2
            raw = np.frombuffer(ctypes.string_at(base, span), dtype=np.uint16)
            out[...] = np.lib.stride_tricks.as_strided(raw, shape, strides)
        else:
            out[...] = np.frombuffer(ctypes.string_at(base, count * 2),
                                     dtype=np.uint16).reshape(shape)
    _api.PyCapsule_SetName(capsule, b"used_dltensor")
    if managed.deleter:
        managed.deleter(ctypes.pointer(managed))
    return out
