"""The backend interface every framework plugs into.

A *backend* (one object per backend name: "python", "onnxruntime", ...) turns
a model version on disk into a :class:`BackendModel`; the model makes one
:class:`BackendInstance` per instance in ``instance_group``; an instance
executes a list of requests (one request, or a batch the dynamic batcher
formed) and returns one response per request.

Backends know nothing of HTTP or gRPC: they see core ``InferenceRequest``
objects with numpy tensors, and return core ``InferenceResponse`` objects.
All methods here run on worker threads, never on the network loop, so they
may block.

Third-party backends register under the ``naiad.backends`` entry-point group
(``name = "package.module:BackendClass"``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from naiad.core.types import InferenceRequest, InferenceResponse
    from naiad.protocol import model_config_pb2


@dataclasses.dataclass
class ModelLoadContext:
    """Everything a backend may need to load one version of a model."""

    name: str
    version: int
    model_dir: str  # <repository>/<model>
    version_dir: str  # <repository>/<model>/<version>
    config: "model_config_pb2.ModelConfig"
    # The backend's section of --backend-config (e.g. {"shm-default-byte-size": "..."}).
    backend_config: dict[str, str] = dataclasses.field(default_factory=dict)
    # The data plane (naiad.dataplane.DataPlane), for backends that call back into the
    # server (BLS: submit, call, on_loop_thread, tracer, model_ready). Opaque here.
    server: Any = None
    # The repository root the model came from.
    repository: str = ""

    @property
    def model_file(self) -> str:
        """Path of the model artifact: <version_dir>/<default_model_filename>."""
        import os

        return os.path.join(self.version_dir, self.config.default_model_filename)


@dataclasses.dataclass
class InstanceSpec:
    """One instance the model must create (from ``instance_group``)."""

    name: str  # e.g. "add_sub_0_1"
    kind: str  # "KIND_CPU", "KIND_GPU", "KIND_MODEL", "KIND_AUTO"
    device_id: int
    group_index: int
    index_in_group: int
    # Whether the instance was asked for as KIND_GPU but runs on the CPU.
    gpu_fallback: bool = False


class BackendInstance:
    """One execution context; ``execute`` is never called twice at the same time.

    ``inline_capable``: execute is cheap Python that never waits on the event
    loop, so the core may run it on the submitting thread (often the loop
    itself) when the instance is idle, instead of handing it to the worker
    thread. The core watches execution times and stops doing so for an
    instance that turns slow. Backends whose execute releases the GIL for
    long (onnxruntime, torch) leave it False.
    """

    inline_capable: bool = False

    def execute(self, requests: "list[InferenceRequest]") -> "list[InferenceResponse] | None":
        """Run the requests; return one response per request, in order.

        Return None when the instance delivers responses itself through
        ``request.respond`` (decoupled models); an entry ``core.types.DEFERRED``
        when it answers that one request itself later (``Model.deliver``) or has
        set ``request.reschedule`` to run it again. An exception fails every
        request in the list with an INTERNAL error carrying its message.
        """
        raise NotImplementedError

    def finalize(self) -> None:
        """Release the instance's resources; called once, after the last execute."""


class BackendModel:
    """A loaded model version; owns what its instances share."""

    def create_instance(self, spec: InstanceSpec) -> BackendInstance:
        raise NotImplementedError

    def finalize(self) -> None:
        """Called after every instance has been finalized."""

    def memory_bytes(self) -> int | None:
        """What the framework reports this version holds in memory (its weights), when it
        can tell; None when it cannot (the repository then goes by the measured growth of
        the process while the version loaded)."""
        return None

    # Set by the backend when responses are produced by the model itself
    # (python decoupled models): the core then never waits for execute's
    # return value.
    decoupled: bool = False
    # The core Model this backend model serves; set by the repository manager
    # before any instance is created, for backends that deliver responses
    # themselves (``model.deliver(request, response, final)``).
    model = None


class Backend:
    """A factory for models of one framework."""

    #: the backend name in config.pbtxt ("backend: ...")
    name: str = ""
    #: model file expected in each version folder when the config names none
    default_model_filename: str = ""
    #: platform names (config "platform: ...") this backend serves
    platforms: tuple[str, ...] = ()
    #: whether requests of a batch may have different shapes beyond dim 0
    #: (True: the backend takes a list of requests as they are, like python)
    accepts_mixed_shapes: bool = False

    def auto_complete_config(
        self, config: "model_config_pb2.ModelConfig", model_dir: str, version_dir: str | None,
        backend_config: dict[str, str],
    ) -> None:
        """Fill in missing parts of ``config`` in place from the model itself.

        Called only when auto-complete is enabled. ``version_dir`` is the
        folder of the version that will be loaded (None if the model has no
        version folder yet).
        """

    def model_files(self, config: "model_config_pb2.ModelConfig", version_dir: str) -> list[str]:
        """The files a version of this model needs in ``version_dir`` (paths).

        ``naiad validate`` checks they exist without loading the model. The
        default is ``default_model_filename`` (the backend's own when the
        config names none); a backend whose file depends on the config (fil's
        ``model_type``) or that reads several files (OpenVINO's ``.bin``)
        says so here.
        """
        import os

        name = config.default_model_filename or self.default_model_filename
        return [os.path.join(version_dir, name)] if name else []

    def load(self, ctx: ModelLoadContext) -> BackendModel:
        raise NotImplementedError
