"""Poll mode: the repositories are the truth, checked every ``--repository-poll-secs``.

Each poll lists the model folders and fingerprints them (names, sizes and
modification stamps; nothing is read). A new folder is loaded, a changed
one reloaded (the manager keeps every version whose files did not change,
and keeps the old versions serving if the new load fails), a folder that
disappeared is unloaded. A model whose load failed is tried again only when
its files change, as in Triton.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from naiad.core.errors import NaiadError

if TYPE_CHECKING:
    from naiad.repository.manager import ModelRepositoryManager

log = logging.getLogger("naiad.repository")


class PeriodicTask:
    """``work()`` every ``interval_s`` seconds on the event loop until ``stop``; a round
    that fails is logged (``failure``) and the next one runs. The poller uses it, and
    so do idle unloads (``residency.py``)."""

    def __init__(self, name: str, interval_s: float,
                 work: Callable[[], Awaitable[Any]], failure: str):
        self.name = name
        self.interval_s = interval_s
        self.work = work
        self.failure = failure
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(self.failure)


class RepositoryPoller:
    def __init__(self, manager: "ModelRepositoryManager", interval_s: float):
        self.manager = manager
        self.interval_s = max(0.1, float(interval_s))
        self._periodic = PeriodicTask("naiad-poll", self.interval_s, self.poll_once,
                                      "polling the model repositories failed")

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    def _changes(self) -> tuple[dict, list[str], list[str]]:
        """(found, names to load, names to forget); blocking (lists and stats files)."""
        mgr = self.manager
        found = mgr.discover()
        to_load = []
        for name, source in sorted(found.items()):
            entry = mgr.models.get(name)
            if name in mgr.duplicates:
                if entry is None or not entry.reason:
                    to_load.append(name)  # reports the duplicate once
                continue
            try:
                fp = source.fingerprint(name)
            except Exception as exc:  # noqa: BLE001
                log.error("unable to poll model '%s': %s", name, exc, extra={"model": name})
                continue
            if entry is None or entry.polled != fp or entry.source is not source:
                to_load.append(name)
        gone = [n for n, e in mgr.models.items()
                if n not in found and e.source is not None]
        return found, to_load, gone

    async def poll_once(self) -> None:
        loop = asyncio.get_running_loop()
        found, to_load, gone = await loop.run_in_executor(None, self._changes)
        mgr = self.manager

        async def load(name: str) -> None:
            try:
                await mgr.load_model(name, _found=found)
            except NaiadError as exc:
                log.error("poll: %s", exc.message, extra={"model": name})

        for name in gone:
            log.info("poll: model '%s' left the repository; unloading it", name,
                     extra={"model": name})
        await asyncio.gather(*[load(n) for n in to_load],
                             *[mgr.forget(n) for n in gone], return_exceptions=True)
