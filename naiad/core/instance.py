"""A model instance: one backend execution context on its own worker thread.

Schedulers decide *what* an instance runs (one request, a batch, the next
step of a sequence); the instance runs it, off the network loop, and hands
the responses back to its model.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable

from naiad.core.errors import Cancelled, NaiadError, as_naiad_error

if TYPE_CHECKING:
    from naiad.backends.base import BackendInstance, InstanceSpec
    from naiad.core.model import Model
    from naiad.core.types import InferenceRequest

log = logging.getLogger("naiad.instance")


class ModelInstance:
    """Runs batches of requests on one backend instance, on a dedicated thread."""

    def __init__(self, model: "Model", spec: "InstanceSpec", backend: "BackendInstance"):
        self.model = model
        self.spec = spec
        self.name = spec.name
        self.backend = backend
        self.thread: threading.Thread | None = None
        self.busy = False
        self.executions = 0

    def start(self, next_batch: Callable[[], "list[InferenceRequest] | None"]) -> None:
        """Start the worker thread; it runs ``next_batch()`` results until it gets None."""
        self.thread = threading.Thread(
            target=self._loop, args=(next_batch,), name=f"naiad-{self.name}", daemon=True
        )
        self.thread.start()

    def _loop(self, next_batch) -> None:
        while True:
            batch = next_batch()
            if batch is None:
                break
            self.run(batch)
        self._finalize()

    def run(self, requests: "list[InferenceRequest]") -> None:
        """Execute one batch and deliver its responses. Never raises."""
        live = [r for r in requests if not r.cancelled]
        if len(live) != len(requests):
            for r in requests:
                if r.cancelled:
                    if r.respond_error(Cancelled("request was cancelled")):
                        self.model.stats.record_request(r, False, time.monotonic_ns())
            requests = live
            if not requests:
                return
        model = self.model
        self.busy = True
        start = time.monotonic_ns()
        for r in requests:
            r.compute_start_ns = start
        error: NaiadError | None = None
        responses = None
        try:
            responses = self.backend.execute(requests)
        except BaseException as exc:  # noqa: BLE001 - a model's failure must not kill the worker
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            error = as_naiad_error(exc)
            log.debug("model '%s' execute failed: %s", model.name, error)
        end = time.monotonic_ns()
        self.executions += 1
        first = requests[0]
        input_end = first.compute_input_end_ns or start
        output_start = first.compute_output_start_ns or end
        batch_size = 0
        for r in requests:
            batch_size += r.batch_size or 1
            if not r.compute_input_end_ns:
                r.compute_input_end_ns = input_end
            if not r.compute_output_start_ns:
                r.compute_output_start_ns = output_start
        model.stats.record_execution(requests, batch_size, start, input_end, output_start, end)
        if responses is None and error is None and not model.decoupled:
            error = NaiadError(f"model '{model.name}' execute() returned no responses")
        model.complete(requests, responses, error)
        self.busy = False

    def _finalize(self) -> None:
        try:
            self.backend.finalize()
        except Exception:
            log.exception("finalize of instance '%s' failed", self.name)
