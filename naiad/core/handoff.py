"""Handing a request's final response from whichever thread produced it to its waiter.

A response callback runs on the thread that produced the response: a
model's worker thread, or the submitting thread itself when the model ran
inline. Two kinds of waiters take it from there:

* ``ResponseWaiter``: a plain thread blocks on a lock the callback releases
  (gRPC handler threads, BLS ``exec``);
* ``final_response_future``: a coroutine awaits a future on its event loop;
  the callback resolves it directly when it runs on that loop's thread (no
  wake-up needed) and through ``call_soon_threadsafe`` otherwise (the data
  plane's ``infer``, BLS ``async_exec``).
"""

from __future__ import annotations

import _thread
import asyncio
import threading
from typing import Any

from naiad.core.types import InferenceResponse, ResponseCallback


class ResponseWaiter:
    """A response callback a thread can wait on: ``wait`` returns once the final
    response arrived (``response``; None when the stream closed without one)."""

    __slots__ = ("response", "done", "lock")

    def __init__(self) -> None:
        self.response: InferenceResponse | None = None
        self.done = False
        lock = _thread.allocate_lock()
        lock.acquire()
        self.lock = lock

    def __call__(self, response: InferenceResponse | None, final: bool) -> None:
        if final:
            self.response = response
            self.done = True
            self.lock.release()

    def wait(self, timeout: float = -1) -> bool:
        """Block until the final response (True) or ``timeout`` seconds (False)."""
        return self.lock.acquire(timeout=timeout)


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def final_response_future() -> tuple[asyncio.Future, ResponseCallback]:
    """A future on the running loop and the response callback that resolves it with the
    final response, from any thread. Call on the loop's own thread."""
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    fut = loop.create_future()

    def on_response(response: InferenceResponse | None, final: bool) -> None:
        if final:
            if threading.get_ident() == loop_thread:
                _resolve(fut, response)  # ran inline on the loop: no wake-up needed
            else:
                loop.call_soon_threadsafe(_resolve, fut, response)

    return fut, on_response
