"""The shared-memory extensions: POSIX (system) shared memory, and CUDA's refusal.

A client creates a POSIX shared memory object (``shm_open``), registers a
window of it under a name (key, offset, byte_size), then names that region in
its requests: inputs are read from it and outputs written into it instead of
travelling in the request and response bodies. ``tritonclient.utils.
shared_memory`` is the usual client.

Safety, since the memory belongs to another process and requests race with
unregistration:

- a key must be a plain shared-memory name (no path), so a registration can
  only ever map objects under ``/dev/shm``, never an arbitrary file;
- every offset and size is checked against the region before any memory is
  touched, and input sizes are checked against the declared shape first;
- each region is mapped once; reads and writes hold the region's lock, and
  unregistering takes the same lock, so nothing reads a mapping (or a file
  descriptor number) after it was closed;
- inputs the model gets never alias the client's memory in a way a model can
  corrupt: small inputs are copied, large ones are mapped privately
  (copy-on-write), which costs no copy up front, keeps writes by the model
  private, and stays valid after the region is unregistered.

CUDA shared memory needs a GPU and CUDA IPC; this server answers its status
queries (there are never any CUDA regions) and refuses registration clearly.
"""

from __future__ import annotations

import mmap
import os
import threading
from typing import Any

import numpy as np

from naiad.core import datatypes, tensor_bytes
from naiad.core.errors import AlreadyExists, InvalidArgument, NotFound, Unsupported
from naiad.core.types import Tensor

try:  # CPython's own shm_open binding (what multiprocessing.shared_memory uses)
    import _posixshmem
except ImportError:  # pragma: no cover - non-POSIX platforms
    _posixshmem = None

# Inputs smaller than this are copied out of the region; larger ones are mapped
# copy-on-write (a syscall and page faults instead of a copy).
PRIVATE_MAP_MIN_BYTES = 64 * 1024
_MAX_KEY_LEN = 255


def _nonneg_int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise InvalidArgument(f"{what} must be a non-negative integer")
    return value


def _shm_path_name(key: str) -> str:
    """The name shm_open takes ('/name'), refusing anything that is not a plain name."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument("shared memory key must be a non-empty string")
    bare = key[1:] if key.startswith("/") else key
    if (not bare or "/" in bare or "\0" in bare or bare in (".", "..")
            or len(bare) > _MAX_KEY_LEN):
        raise InvalidArgument(f"invalid shared memory key '{key}': expected a name like "
                              "'/my_region' (no other '/')")
    return "/" + bare


def _open_shm(key: str) -> int:
    name = _shm_path_name(key)
    try:
        if _posixshmem is not None:
            return _posixshmem.shm_open(name, os.O_RDWR, 0o600)
        return os.open("/dev/shm" + name, os.O_RDWR)  # pragma: no cover
    except OSError:
        raise InvalidArgument(f"Unable to open shared memory region: '{key}'") from None


class SharedMemoryRegion:
    """One registered window [offset, offset + byte_size) of a shared memory object."""

    __slots__ = ("name", "key", "offset", "byte_size", "_fd", "_mm", "_delta", "_lock",
                 "closed")

    def __init__(self, name: str, key: str, offset: int, byte_size: int):
        self.name = name
        self.key = key
        self.offset = offset
        self.byte_size = byte_size
        self._lock = threading.Lock()
        self.closed = False
        fd = _open_shm(key)
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': offset {offset} + "
                    f"byte_size {byte_size} exceeds the {size} bytes of shared memory object "
                    f"'{key}'")
            # mmap offsets must be page aligned: map from the page holding 'offset'
            aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
            self._delta = offset - aligned
            self._mm = mmap.mmap(fd, self._delta + byte_size, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE, offset=aligned)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def describe(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}

    def _check_window(self, offset: Any, byte_size: Any) -> tuple[int, int]:
        offset = _nonneg_int(offset, "shared_memory_offset")
        byte_size = _nonneg_int(byte_size, "shared_memory_byte_size")
        if offset + byte_size > self.byte_size:
            raise InvalidArgument(
                f"Invalid offset + byte size for shared memory region: '{self.name}'")
        return offset, byte_size

    def _gone(self) -> NotFound:
        return NotFound(f"Unable to find shared memory region: '{self.name}'")

    def read(self, offset: int, byte_size: int, datatype: str, shape: tuple, name: str,
             ) -> np.ndarray:
        if datatype != "BYTES":
            expected = tensor_bytes.element_count(shape) * datatypes.ELEMENT_SIZE[datatype]
            if expected != byte_size:
                raise InvalidArgument(
                    f"input byte size mismatch for input '{name}'. Expected {expected}, got "
                    f"{byte_size}")
        start = self._delta + offset
        with self._lock:
            if self.closed:
                raise self._gone()
            if datatype == "BYTES":
                return tensor_bytes.decode_bytes_elements(
                    memoryview(self._mm)[start:start + byte_size], shape, name)
            if byte_size < PRIVATE_MAP_MIN_BYTES:
                view = np.frombuffer(self._mm, dtype=np.uint8, count=byte_size, offset=start)
                buf = view.copy()
                del view
            else:
                # private copy-on-write mapping of just these pages: no copy now, the
                # model may write into it, and it outlives an unregistration
                absolute = self.offset + offset
                aligned = absolute - absolute % mmap.ALLOCATIONGRANULARITY
                delta = absolute - aligned
                mm = mmap.mmap(self._fd, delta + byte_size, mmap.MAP_PRIVATE,
                               mmap.PROT_READ | mmap.PROT_WRITE, offset=aligned)
                buf = np.frombuffer(mm, dtype=np.uint8, count=byte_size, offset=delta)
        return tensor_bytes.decode_raw(buf, datatype, shape, name)

    def write(self, offset: int, data) -> None:
        start = self._delta + offset
        with self._lock:
            if self.closed:
                raise self._gone()
            self._mm[start:start + len(data)] = data

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            try:
                self._mm.close()
            except BufferError:  # a view is still alive: the mapping goes with it
                pass
            os.close(self._fd)


class SystemSharedMemoryManager:
    """The registry of system shared-memory regions (HTTP and gRPC both use it)."""

    def __init__(self) -> None:
        self._regions: dict[str, SharedMemoryRegion] = {}
        self._lock = threading.Lock()

    # -- the extension's API ------------------------------------------------------

    def status(self, name: str = "") -> list[dict]:
        """Every region ('' ) or the named one, as Triton describes them."""
        if name:
            region = self._regions.get(name)
            if region is None:
                raise NotFound(f"Unable to find system shared memory region: '{name}'")
            return [region.describe()]
        return [r.describe() for _, r in sorted(self._regions.items())]

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InvalidArgument(
                "'region name' is necessary to register system shared memory region")
        _nonneg_int(offset, "offset")
        _nonneg_int(byte_size, "byte_size")
        if byte_size == 0:
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': byte_size must be > 0")
        with self._lock:
            if name in self._regions:
                raise AlreadyExists(f"shared memory region '{name}' already in manager")
            self._regions[name] = SharedMemoryRegion(name, key, offset, byte_size)

    def register_from_json(self, name: str, body: dict) -> None:
        """The HTTP register body: {"key": str, "offset": int, "byte_size": int}."""
        if not name:
            raise InvalidArgument(
                "'region name' is necessary to register system shared memory region")
        if "key" not in body:
            raise InvalidArgument("Shared memory register request has no 'key' field")
        if "byte_size" not in body:
            raise InvalidArgument("Shared memory register request has no 'byte_size' field")
        key = body["key"]
        if not isinstance(key, str):
            raise InvalidArgument("'key' must be a string")
        self.register(name, key, body.get("offset", 0), body["byte_size"])

    def unregister(self, name: str = "") -> None:
        """Unregister one region, or all ('' ); an unknown name is not an error."""
        with self._lock:
            if name:
                region = self._regions.pop(name, None)
                regions = [region] if region is not None else []
            else:
                regions = list(self._regions.values())
                self._regions.clear()
        for region in regions:
            region.close()

    def close(self) -> None:
        self.unregister("")

    # -- the request path -------------------------------------------------------------

    def _region(self, name: Any) -> SharedMemoryRegion:
        if not isinstance(name, str):
            raise InvalidArgument("shared_memory_region must be a string")
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find shared memory region: '{name}'")
        return region

    def read_input(self, region: str, offset: int, byte_size: int, datatype: str,
                   shape: tuple, name: str) -> np.ndarray:
        """An input tensor from a region (bounds and sizes checked first)."""
        reg = self._region(region)
        offset, byte_size = reg._check_window(offset, byte_size)
        return reg.read(offset, byte_size, datatype, tuple(shape), name)

    def check_output(self, params: dict, name: str) -> None:
        """Validate an output's placement when the request arrives (before inference)."""
        reg = self._region(params.get("shared_memory_region"))
        if "shared_memory_byte_size" not in params:
            raise InvalidArgument(
                f"output '{name}' names a shared memory region but no shared_memory_byte_size")
        reg._check_window(params.get("shared_memory_offset", 0),
                          params["shared_memory_byte_size"])

    def write_output(self, tensor: Tensor, params: dict) -> dict:
        """Write an output into its region; returns the response parameters for it.

        Triton sends no data and no extra parameters for such an output (the
        client reads the region), so the returned dict is empty.
        """
        reg = self._region(params.get("shared_memory_region"))
        if "shared_memory_byte_size" not in params:
            raise InvalidArgument(f"output '{tensor.name}' names a shared memory region but "
                                  "no shared_memory_byte_size")
        offset, byte_size = reg._check_window(params.get("shared_memory_offset", 0),
                                              params["shared_memory_byte_size"])
        data = tensor_bytes.raw_bytes(tensor.datatype, tensor.data)
        if len(data) > byte_size:
            raise InvalidArgument(
                f"shared memory size specified with the request for output '{tensor.name}' "
                f"({byte_size} bytes) should be at least {len(data)} bytes to hold the results")
        if len(data):
            reg.write(offset, data)
        return {}


class CudaSharedMemoryManager:
    """CUDA shared memory on a server without CUDA support: nothing can be registered."""

    def status(self, name: str = "") -> list[dict]:
        if name:
            raise NotFound(f"Unable to find cuda shared memory region: '{name}'")
        return []

    def register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        if not name:
            raise InvalidArgument(
                "'region name' is necessary to register cuda shared memory region")
        raise Unsupported(
            f"failed to register CUDA shared memory region '{name}': CUDA shared memory is "
            "not supported by this server (it runs without CUDA); use system shared memory")

    def register_from_json(self, name: str, body: dict) -> None:
        """The HTTP register body: {"raw_handle": {"b64": str}, "device_id": int, "byte_size": int}."""
        handle = body.get("raw_handle")
        if not isinstance(handle, dict) or not isinstance(handle.get("b64"), str):
            raise InvalidArgument(
                "'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t")
        for field in ("device_id", "byte_size"):
            if field not in body:
                raise InvalidArgument(f"Shared memory register request has no '{field}' field")
        self.register(name, b"", body["device_id"], body["byte_size"])

    def unregister(self, name: str = "") -> None:
        """Nothing is ever registered: unregistering always succeeds, as in Triton."""
