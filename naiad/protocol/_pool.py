"""Private protobuf descriptor pool for naiad's generated protocol modules.

naiad's messages use Triton's fully-qualified names (``inference.ModelConfig``,
``grpc.health.v1.HealthCheckRequest``, ...). The official ``tritonclient`` and
``grpcio-health-checking`` packages register those same names in protobuf's
process-wide default pool under different file names, and protobuf refuses to
register a symbol twice ("duplicate symbol"). Registering naiad's files in this
separate pool lets naiad and those packages be imported in one process (tests,
tools, an in-process client); the wire, text and JSON formats are unaffected.

``scripts/gen_protos.py`` rewrites the generated ``*_pb2.py`` modules to call
``POOL.AddSerializedFile`` instead of ``descriptor_pool.Default()`` and
``build_top_descriptors_and_messages`` instead of protobuf's builder.
"""

from __future__ import annotations

import threading
from typing import Any

from google.protobuf import descriptor_pool, symbol_database
from google.protobuf.internal import api_implementation
from google.protobuf.internal import builder as _builder

POOL = descriptor_pool.DescriptorPool()

# Only the pure-Python protobuf implementation records generated classes in a
# pool (through the builder's module-level symbol database, which points at the
# default pool); upb/cpp keep the classes in a side table only. Give that
# registration our own pool so it cannot clash with tritonclient's.
_SYMBOLS = symbol_database.SymbolDatabase(pool=POOL)
_SWAP_LOCK = threading.Lock()


def build_top_descriptors_and_messages(file_des: Any, module_name: str, module: dict) -> None:
    """Same as protobuf's builder.BuildTopDescriptorsAndMessages, using POOL."""
    if api_implementation.Type() != "python" or not hasattr(_builder, "_sym_db"):
        _builder.BuildTopDescriptorsAndMessages(file_des, module_name, module)
        return
    with _SWAP_LOCK:
        saved = _builder._sym_db
        _builder._sym_db = _SYMBOLS
        try:
            _builder.BuildTopDescriptorsAndMessages(file_des, module_name, module)
        finally:
            _builder._sym_db = saved


__all__ = ["POOL", "build_top_descriptors_and_messages"]
