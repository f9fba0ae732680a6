"""Response delivery a scheduler interposes: ordering, and taps on the final response.

A request carries one response callback (set by whoever issued it). A
scheduler that must see or reorder responses (``preserve_ordering``, the
response cache) wraps that callback when it takes the request; nothing on the
plain path pays for it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from naiad.core.types import InferenceRequest, InferenceResponse


def wrap_callback(request: "InferenceRequest",
                  make: Callable[[Callable], Callable]) -> None:
    """Replace a request's response callback by ``make(original)``."""
    original = request._callback  # noqa: SLF001 - the core's own request object
    if original is None:
        def original(response, final):  # a request nobody listens to (warmup, BLS fire-and-forget)
            return None
    request.set_response_callback(make(original))


class _Slot:
    __slots__ = ("callback", "pending", "done")

    def __init__(self, callback: Callable):
        self.callback = callback
        self.pending: list = []  # (response, final) not yet delivered
        self.done = False


class OrderedDelivery:
    """``preserve_ordering``: responses leave in the order requests left the queue.

    A slot is registered for each request when it is taken into a batch (the
    batcher's lock orders the registrations); responses that arrive early
    wait in their slot until every earlier request has its final response.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flush = threading.Lock()  # one thread delivers at a time, in order
        self._slots: deque[_Slot] = deque()

    def register(self, requests: "list[InferenceRequest]") -> None:
        for request in requests:
            holder: list[_Slot] = []

            def make(original, holder=holder):
                slot = _Slot(original)
                holder.append(slot)
                return lambda response, final: self._arrive(slot, response, final)

            wrap_callback(request, make)
            self._slots.append(holder[0])

    def _arrive(self, slot: _Slot, response: "InferenceResponse | None", final: bool) -> None:
        with self._lock:
            slot.pending.append((response, final))
        with self._flush:
            ready = []
            with self._lock:
                slots = self._slots
                while slots and slots[0].pending:
                    head = slots[0]
                    for item in head.pending:
                        ready.append((head.callback, item[0], item[1]))
                        if item[1]:
                            head.done = True
                    head.pending = []
                    if head.done:
                        slots.popleft()
                    else:
                        break
            for callback, resp, fin in ready:
                callback(resp, fin)
