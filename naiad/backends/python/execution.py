"""What a python model's ``execute`` produced, settled by Triton's rules.

Shared by in-process instances (``backend.py``) and worker processes
(``process.py``), so both answer alike:

* A model that is not decoupled returns one ``InferenceResponse`` per request,
  or ``None`` for a request it answers through its response sender (now or
  from another thread later) or reschedules. A returned response for a request
  whose sender already sent one, a list of the wrong length or type, or a
  response for a rescheduled request fails the whole batch with Triton's
  message; a request whose response the sender still holds (sent without the
  final flag) gets that response instead of the error.
* A decoupled model returns ``None``; anything else is an error response with
  the final flag for every request whose sender is still open (Triton: "...
  is using the decoupled mode and the execute function must return None.").
* ``request.set_release_flags(TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)`` runs
  the request again, for models with ``sequence_batching { iterative_sequence:
  true }``; elsewhere the request is answered with Triton's error instead of
  being left without an answer.
* Any exception, ``SystemExit`` and ``KeyboardInterrupt`` included, fails the
  batch's open requests with an error naming the model and the exception; the
  instance stays usable.

This module imports nothing beyond pb_utils and the core (worker processes in
another Python environment import it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from naiad.backends.python import pb_utils
from naiad.backends.python.isolation import describe_exception
from naiad.core import types as core
from naiad.core.errors import ErrorKind, NaiadError

log = logging.getLogger("naiad.backends.python")

RESCHEDULE = pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE
_NOTHING: list[int] = []  # (never changed) no request to run again
RESCHEDULE_UNSUPPORTED = (
    "Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, while the model is "
    "not configured to handle such a flag.")


def model_error(instance_name: str, exc: BaseException, model_name: str | None = None
                ) -> NaiadError:
    """The error a model's exception gives the requests it was running."""
    if isinstance(exc, NaiadError):
        return exc
    if isinstance(exc, pb_utils.TritonModelException):
        kind = pb_utils.TritonError._KINDS.get(exc.code(), ErrorKind.INTERNAL)
        return NaiadError(exc.message(), kind)
    who = f"model instance '{instance_name}'"
    if model_name and not isinstance(exc, Exception):  # an exit: say which model did it
        who += f" of model '{model_name}'"
    return NaiadError(
        f"Failed to process the request(s) for {who}, message: {describe_exception(exc)}")


class Settler:
    """Settles the executions of one instance. ``runner`` delivers (``deliver(request,
    response, final)``) and keeps the senders of rescheduled requests
    (``kept_senders``, keyed by ``request_key(core_request)``)."""

    def __init__(self, instance_name: str, model_name: str, decoupled: bool, iterative: bool,
                 runner: Any):
        self.instance = instance_name
        self.model = model_name
        self.decoupled = decoupled
        self.iterative = iterative
        self.runner = runner

    def _error(self, exc: BaseException) -> NaiadError:
        err = model_error(self.instance, exc, self.model)
        log.error("model instance '%s' of model '%s' execute failed: %s", self.instance,
                  self.model, err.message,
                  exc_info=exc if log.isEnabledFor(logging.DEBUG) and isinstance(exc, Exception)
                  else None)
        return err

    def _keep_sender(self, request: pb_utils.InferenceRequest) -> None:
        sender = request._sender
        if sender is not None:
            self.runner.kept_senders[self.runner.request_key(request._core)] = sender

    def settle(self, requests: list, result: Any, exc: BaseException | None = None
               ) -> tuple[list | None, list[int]]:
        """(responses for ``Model.complete`` — None when the model answers every
        request itself — and the indices of the requests to run again)."""
        if self.decoupled:
            return self._settle_decoupled(requests, result, exc)
        return self._settle(requests, result, exc)

    # -- decoupled ---------------------------------------------------------------------

    def _settle_decoupled(self, requests: list, result: Any, exc: BaseException | None
                          ) -> tuple[None, list[int]]:
        if exc is None and result is not None:
            exc = pb_utils.TritonModelException(
                f"Python model '{self.instance}' is using the decoupled mode and the execute "
                "function must return None.")
        if exc is not None:
            err = self._error(exc)
            for r in requests:
                self._fail_open(r, err)
            return None, []
        again: list[int] = []
        for i, r in enumerate(requests):
            if r._release_flags != RESCHEDULE:
                continue
            sender = r._sender
            if sender is not None and sender._done:
                continue  # finished already: nothing to run again
            if self.iterative:
                self._keep_sender(r)
                again.append(i)
            else:
                log.error("model instance '%s': %s", self.instance, RESCHEDULE_UNSUPPORTED)
                self._fail_open(r, NaiadError(RESCHEDULE_UNSUPPORTED, ErrorKind.INVALID_ARG))
        return None, again

    def _fail_open(self, request: pb_utils.InferenceRequest, err: NaiadError) -> None:
        """Close the request's sender; answer the request with ``err`` unless its
        final response went out already."""
        sender = request._sender
        if sender is not None:
            done, _held = sender._close()
            if done:
                return
        self.runner.deliver(request._core, core.InferenceResponse(error=err), True)

    # -- not decoupled -------------------------------------------------------------------

    def _settle(self, requests: list, result: Any, exc: BaseException | None
                ) -> tuple[list, list[int]]:
        n = len(requests)
        if exc is None and type(result) is list and len(result) == n:
            # the common case, checked without changing anything: one response per
            # request, no response sender, nothing rescheduled
            out = []
            response_type = pb_utils.InferenceResponse
            for r, entry in zip(requests, result):
                if type(entry) is not response_type or r._sender is not None or \
                        r._release_flags == RESCHEDULE:
                    break
                try:
                    out.append(entry._to_core())
                except Exception as bad:  # noqa: BLE001 - a malformed response fails its request
                    out.append(core.InferenceResponse(error=model_error(self.instance, bad)))
            else:
                return out, _NOTHING
        entries: list = []
        if exc is None:
            if result is None:
                entries = [None] * n
            elif isinstance(result, (list, tuple)):
                entries = list(result)
                if len(entries) != n:
                    exc = pb_utils.TritonModelException(
                        "Number of InferenceResponse objects do not match the number of "
                        f"InferenceRequest objects. InferenceRequest(s) size is:{n}, and "
                        f"InferenceResponse(s) size is:{len(entries)}")
            else:
                exc = pb_utils.TritonModelException(
                    f"Expected a list in the execute return, found type '{type(result)}'.")
        if exc is None:
            exc = self._check(requests, entries)
        if exc is not None:
            err = self._error(exc)
            out: list = []
            for r in requests:
                sender = r._sender
                if sender is not None:
                    done, held = sender._close()
                    if done:
                        out.append(core.DEFERRED)  # answered already
                        continue
                    if held is not None:
                        out.append(held)  # the client gets the one response it was sent
                        continue
                out.append(core.InferenceResponse(error=err))
            return out, []
        out = []
        again: list[int] = []
        for i, (r, entry) in enumerate(zip(requests, entries)):
            if entry is not None:
                try:
                    out.append(entry._to_core())
                except Exception as bad:  # noqa: BLE001 - a malformed response fails its request
                    out.append(core.InferenceResponse(error=model_error(self.instance, bad)))
                continue
            sender = r._sender
            if r._release_flags == RESCHEDULE and not (sender is not None and sender._done):
                if self.iterative:
                    self._keep_sender(r)
                    again.append(i)
                    out.append(core.DEFERRED)
                else:
                    log.error("model instance '%s': %s", self.instance, RESCHEDULE_UNSUPPORTED)
                    if sender is not None:
                        sender._close()
                    out.append(core.InferenceResponse(
                        error=NaiadError(RESCHEDULE_UNSUPPORTED, ErrorKind.INVALID_ARG)))
            elif sender is not None:
                out.append(core.DEFERRED)  # its sender answers, now or later
            else:
                out.append(core.InferenceResponse(error=NaiadError(
                    f"Failed to process the request(s) for model instance '{self.instance}', "
                    "message: the execute function returned None for a request and sent no "
                    "response for it")))
        return out, again

    @staticmethod
    def _check(requests: list, entries: list) -> BaseException | None:
        """Triton's checks on the returned list that fail the whole batch."""
        for r, entry in zip(requests, entries):
            if entry is None:
                continue
            if r._release_flags == RESCHEDULE:
                return pb_utils.TritonModelException(
                    "Expected a None object in the execute function return list for "
                    f"reschduled request, found type '{type(entry)}'.")
            if not isinstance(entry, pb_utils.InferenceResponse):
                return pb_utils.TritonModelException(
                    "Expected an 'InferenceResponse' object in the execute function return "
                    f"list, found type '{type(entry)}'.")
            sender = r._sender
            if sender is not None and not sender._claim_final():
                return pb_utils.TritonModelException(
                    "Unable to send response. Non-decoupled model cannot send more than one "
                    "response.")
        return None


def answer_open_senders(runner: Any, message: str) -> None:
    """At unload: the requests whose response senders the model never closed get
    their held response, or ``message`` as an error, with the final flag."""
    for sender in list(runner.open_senders.values()):
        done, held = sender._close()
        if done:
            continue
        log.warning("%s", message)
        response = held if held is not None else core.InferenceResponse(
            error=NaiadError(message, ErrorKind.UNAVAILABLE))
        runner.deliver(sender._request, response, True)


class ModelLoop:
    """The event loop of a model instance's coroutines (async ``initialize``,
    ``execute``, ``finalize``), run by one thread all the time: as in Triton's
    stub, tasks a model starts go on after its execute returned. A
    ``SystemExit`` from a task of the model neither stops the loop nor its thread.
    """

    def __init__(self, name: str, on_enter=None):
        self.name = name
        self._on_enter = on_enter  # called on the loop's thread before each coroutine
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._run, args=(loop,), daemon=True,
                                                name=f"naiad-{self.name}-async")
                self._thread.start()
            return loop

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        while True:
            try:
                loop.run_forever()
                return  # stopped by close()
            except BaseException as exc:  # noqa: BLE001 - a task of the model exited
                log.error("model instance '%s': a task of the model ended with %s; its "
                          "event loop goes on", self.name, describe_exception(exc))

    def _wrap(self, coro):
        enter = self._on_enter

        async def run():
            if enter is not None:
                enter()
            try:
                return True, await coro
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                return False, exc

        return run()

    def run(self, coro):
        """Run ``coro`` on the loop; its result, or raise what it raised."""
        ok, value = asyncio.run_coroutine_threadsafe(self._wrap(coro), self._get()).result()
        if not ok:
            raise value
        return value

    def start(self, coro, done) -> None:
        """Start ``coro``; ``done(ok, value)`` on the loop's thread when it ends."""
        async def run():
            ok, value = await self._wrap(coro)
            done(ok, value)

        asyncio.run_coroutine_threadsafe(run(), self._get())

    def close(self, drain_s: float = 30.0) -> None:
        """Let the coroutines still running finish (bounded), then stop the loop."""
        loop = self._loop
        if loop is None:
            return
        self._loop = None

        async def drain():
            current = asyncio.current_task()
            pending = [t for t in asyncio.all_tasks() if t is not current]
            if pending:
                await asyncio.wait(pending, timeout=drain_s)

        try:
            asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout=drain_s + 5)
        except Exception:
            log.warning("model instance '%s': async executions still running at unload",
                        self.name)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not loop.is_running():
            loop.close()
