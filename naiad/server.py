"""Server: a data plane and the network frontends around it.

``naiad.dataplane.DataPlane`` makes every decision (lookup, submit, health,
metadata, statistics, repository control); this shell builds, starts, drains
and stops the frontends (HTTP, gRPC, metrics) that translate the wire to it.
Its inference and query methods are the data plane's (embedding code and
tests call them here; frontends and BLS get the data plane itself).

Asynchronous by design (the frontends share its event loop); for plain
synchronous code, :class:`naiad.embedded.EmbeddedServer` runs one on a
background thread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from naiad.dataplane import BASE_EXTENSIONS, DataPlane, make_request
from naiad.options import ServerOptions
from naiad.version import __version__

log = logging.getLogger("naiad.server")

__all__ = ["BASE_EXTENSIONS", "Server", "make_request"]


class _DataPlaneAttribute:
    """A ``Server`` attribute that is its data plane's attribute of the same name (a
    bound method for the calls): no extra call on the way, read-only here."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.__doc__ = getattr(getattr(DataPlane, name, None), "__doc__", None)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return getattr(obj.dataplane, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"Server.{self.name} is the data plane's: set it on "
                             "server.dataplane (or call its methods)")


class Server:
    """A naiad server: a data plane (models, their schedulers) and network frontends."""

    def __init__(self, options: ServerOptions | None = None, **kwargs: Any):
        if options is None:
            options = ServerOptions.from_kwargs(**kwargs)
        elif kwargs:
            raise TypeError("pass either ServerOptions or keyword options, not both")
        self.options = options
        self.dataplane = DataPlane(options)
        self.frontends: list[Any] = []

    # the data plane's calls and parts, under the names embedding code has always used
    live = _DataPlaneAttribute()
    ready = _DataPlaneAttribute()
    model_ready = _DataPlaneAttribute()
    metadata = _DataPlaneAttribute()
    model_metadata = _DataPlaneAttribute()
    model_config = _DataPlaneAttribute()
    model_config_dict = _DataPlaneAttribute()
    get_model = _DataPlaneAttribute()
    submit = _DataPlaneAttribute()
    infer = _DataPlaneAttribute()
    infer_stream = _DataPlaneAttribute()
    infer_numpy = _DataPlaneAttribute()
    repository_index = _DataPlaneAttribute()
    load_model = _DataPlaneAttribute()
    load_model_from_parameters = _DataPlaneAttribute()
    unload_model = _DataPlaneAttribute()
    model_statistics = _DataPlaneAttribute()
    begin_shutdown = _DataPlaneAttribute()
    check = _DataPlaneAttribute()
    manager = _DataPlaneAttribute()
    extensions = _DataPlaneAttribute()
    shared_memory = _DataPlaneAttribute()
    cuda_shared_memory = _DataPlaneAttribute()
    tracer = _DataPlaneAttribute()
    metrics = _DataPlaneAttribute()
    started = _DataPlaneAttribute()
    stopped = _DataPlaneAttribute()
    shutting_down = _DataPlaneAttribute()

    @property
    def log_settings(self) -> Any:
        return self.dataplane.log_settings

    @log_settings.setter
    def log_settings(self, settings: Any) -> None:
        """The logging extension (the command line installs it)."""
        self.dataplane.log_settings = settings
        if settings is not None and "logging" not in self.dataplane.extensions:
            self.dataplane.extensions.append("logging")

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Check the repositories and load models as the control mode says.

        The server is ready (``ready()``) only once this returns: every model
        the mode asks for has finished loading (and warming up). In poll mode
        the repository poller starts afterwards.
        """
        await self.dataplane.start()

    async def start_frontends(self) -> None:
        """Bind and start the network endpoints the options allow.

        Raises OSError (with the address) if a port is busy; frontends already
        started are stopped again.
        """
        opts = self.options
        dp = self.dataplane
        if dp.loop is None:
            dp.bind_loop(asyncio.get_running_loop())
        specs: list[Any] = []
        if opts.allow_grpc:
            from naiad.frontends.grpc import GrpcFrontend

            specs.append(GrpcFrontend(dp, opts.grpc_address, opts.grpc_port))
        if opts.allow_http:
            from naiad.frontends.http import HttpFrontend

            specs.append(HttpFrontend(dp, opts.http_address, opts.http_port,
                                      opts.reuse_http_port, opts.http_max_input_size))
        if opts.allow_openai:
            from naiad.frontends.openai import openai_frontend

            specs.append(openai_frontend(dp))
        if opts.allow_metrics:
            from naiad.frontends.metrics import MetricsFrontend

            specs.append(MetricsFrontend(dp, opts.effective_metrics_address, opts.metrics_port))
        try:
            for fe in specs:
                try:
                    await fe.start()
                except OSError as exc:  # name the service, as tritonserver does
                    raise OSError(exc.errno, f"failed to start {fe.name}: "
                                             f"{exc.strerror or exc}") from None
                self.frontends.append(fe)
                log.info("Started %s at %s:%d", fe.name, fe.address, fe.port)
        except BaseException:
            for fe in reversed(self.frontends):
                await fe.stop()
            self.frontends.clear()
            raise

    def option_rows(self) -> list[tuple[str, str]]:
        opts = self.options
        rows = [
            ("server_id", opts.server_id),
            ("server_version", __version__),
            ("server_extensions", " ".join(self.dataplane.extensions)),
        ]
        rows += [(f"model_repository_path[{i}]", r) for i, r in enumerate(opts.model_repositories)]
        rows += [
            ("model_control_mode", f"MODE_{opts.model_control_mode.upper()}"),
            ("strict_model_config", str(int(not opts.auto_complete_config))),
            ("model_config_name", opts.model_config_name),
            ("rate_limit", opts.rate_limit.upper()),
            ("strict_readiness", str(int(opts.strict_readiness))),
            ("exit_timeout", str(opts.exit_timeout_secs)),
        ]
        return rows

    def load_failures(self) -> list[tuple[str, str, str]]:
        return [row for row in self.manager.status_rows() if row[2].startswith("UNAVAILABLE")]

    async def stop(self, timeout: float | None = None) -> bool:
        """Shut down gracefully: drain, close the frontends, unload every model.

        At once the server reports not ready and the frontends refuse new
        inference (UNAVAILABLE); requests already accepted finish, within
        ``timeout`` (default ``--exit-timeout-secs``) in all. Then the
        frontends close and every model drains its queue and is finalized,
        users (ensembles) before the models they call. Returns False if the
        timeout expired with work still in flight.
        """
        dp = self.dataplane
        if dp.stopped:
            return True
        dp.begin_shutdown()
        loop = asyncio.get_running_loop()
        wait = self.options.exit_timeout_secs if timeout is None else timeout
        deadline = loop.time() + wait
        clean = True
        await dp.stop_polling()
        for fe in self.frontends:
            drain = getattr(fe, "drain", None)
            if drain is None:
                continue
            try:
                if await drain(max(0.0, deadline - loop.time())) is False:
                    clean = False
            except Exception:
                log.exception("draining %s failed", type(fe).__name__)
        for fe in reversed(self.frontends):
            try:
                await fe.stop()
            except Exception:
                log.exception("stopping %s failed", type(fe).__name__)
        self.frontends.clear()
        if not await dp.stop(deadline - loop.time()):
            clean = False
        if not clean:
            log.error("Exit timeout of %ss expired with requests still in flight", wait)
        return clean

    async def __aenter__(self) -> "Server":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
