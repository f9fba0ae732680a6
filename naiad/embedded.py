"""A naiad server for plain synchronous code, with no socket unless asked.

    from naiad.embedded import EmbeddedServer

    with EmbeddedServer(model_repository="./models") as server:
        out = server.infer("add_sub", {"INPUT0": a, "INPUT1": b})

The asynchronous :class:`naiad.Server` runs on an event loop in a background
thread; every method here runs on that loop through the data plane's
any-thread entry (``DataPlane.call``) and waits for the answer.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np

from naiad.options import ServerOptions
from naiad.server import Server


class EmbeddedServer:
    def __init__(self, options: ServerOptions | None = None, **kwargs: Any):
        self.server = Server(options, **kwargs)
        self._thread: threading.Thread | None = None

    def _call(self, coro, timeout: float | None = None):
        """Run a coroutine on the server's loop (the data plane's any-thread entry)."""
        if self._thread is None:
            coro.close()
            raise RuntimeError("the embedded server is not started")
        return self.server.dataplane.call(coro, timeout)

    def start(self, frontends: bool = False) -> "EmbeddedServer":
        """Load the models (and bind the network endpoints if ``frontends``)."""
        ready = threading.Event()
        dataplane = self.server.dataplane

        def run_loop() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            dataplane.bind_loop(loop)
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run_loop, name="naiad-embedded", daemon=True)
        self._thread.start()
        ready.wait()
        try:
            self._call(self.server.start())
            if frontends:
                self._call(self.server.start_frontends())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float | None = None) -> None:
        loop = self.server.dataplane.loop
        if self._thread is None or loop is None:
            return
        try:
            self._call(self.server.stop(timeout))
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the API -------------------------------------------------------------------

    def live(self) -> bool:
        return self.server.live()

    def ready(self) -> bool:
        return self.server.ready()

    def model_ready(self, name: str, version: int = -1) -> bool:
        return self.server.model_ready(name, version)

    def metadata(self) -> dict:
        return self.server.metadata()

    def model_metadata(self, name: str, version: int = -1) -> dict:
        return self.server.model_metadata(name, version)

    def model_config(self, name: str, version: int = -1) -> dict:
        return self.server.model_config_dict(name, version)

    def infer(self, model_name: str, inputs: dict[str, Any], outputs: list[str] | None = None,
              version: int = -1, parameters: dict | None = None, request_id: str = "",
              timeout: float | None = None) -> dict[str, np.ndarray]:
        """numpy in, numpy out; raises NaiadError on failure."""
        return self._call(self.server.infer_numpy(model_name, inputs, outputs, version,
                                                  parameters, request_id), timeout)

    def load_model(self, name: str) -> None:
        self._call(self.server.load_model(name))

    def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        self._call(self.server.unload_model(name, unload_dependents))
