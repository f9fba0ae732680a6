"""Streamed HTTP responses that stop when their client goes away.

A streamed answer (server-sent events from ``/generate_stream`` or the
OpenAI frontend) is produced by a coroutine that iterates
``DataPlane.infer_stream``. Once the request body has been read, the next ASGI
``receive()`` returns ``http.disconnect`` only when the connection drops
(naiad's server and uvicorn both work this way), so the coroutine races a
watcher on ``receive``: on a disconnect the coroutine is cancelled, which
closes its ``infer_stream`` iterator, which cancels the model's request
(``is_cancelled()`` turns true in a python model, a queued request is
dropped). Without this, writes to a closed connection are silently
discarded and the model would generate to the end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


async def until_disconnect(work: Awaitable[Any], receive: Callable[[], Awaitable[dict]]) -> bool:
    """Run ``work`` to completion, or cancel it when the client disconnects.

    Returns True if ``work`` finished, False if the client went away first
    (``work`` has then been cancelled and awaited). Exceptions of ``work``
    propagate.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task.done():
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        task.result()
        return True
    if watcher.result():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await task
        return False
    # the server does not report disconnects through receive(): just finish the work
    await task
    return True


async def _wait_disconnect(receive: Callable[[], Awaitable[dict]]) -> bool:
    """True once ``receive`` reports ``http.disconnect``; False if it says anything else."""
    while True:
        message = await receive()
        kind = message.get("type")
        if kind == "http.disconnect":
            return True
        if kind == "http.request" and message.get("more_body", False):
            continue  # a body still arriving (not expected once it was read): keep watching
        return False
