"""The model repository manager: what is loaded, in which state, and why.

Every model has an entry; every version of it a state (LOADING, READY,
UNLOADING, UNAVAILABLE with a reason). Loads run on a bounded thread pool
(``--model-load-thread-count``) so one slow or failing model never delays
another. A reload builds the new versions beside the old ones and swaps the
version table in one assignment once they are ready: requests already
accepted finish on the version they reached, new requests see the new one,
and nothing accepted fails because of the swap.

The inference hot path touches only ``get_model``: two dict lookups.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from naiad.backends import registry
from naiad.backends.base import InstanceSpec, ModelLoadContext
from naiad.core.errors import (
    InvalidArgument,
    NaiadError,
    NotFound,
    Unavailable,
    as_naiad_error,
)
from naiad.core.instance import ModelInstance
from naiad.core.model import Model
from naiad.protocol import model_config_pb2 as mc
from naiad.repository import config as cfg
from naiad.scheduling import create_scheduler

if TYPE_CHECKING:
    from naiad.options import ServerOptions

log = logging.getLogger("naiad.repository")

LOADING = "LOADING"
READY = "READY"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"


@dataclasses.dataclass
class VersionState:
    version: int
    state: str
    reason: str = ""
    model: Model | None = None


class ModelEntry:
    """One model name: where it lives and the state of each of its versions."""

    def __init__(self, name: str, repository: str, model_dir: str):
        self.name = name
        self.repository = repository
        self.model_dir = model_dir
        # version -> state, replaced as a whole on every change (readers never lock)
        self.versions: dict[int, VersionState] = {}
        # the ready models by version and the default one, for the hot path
        self.ready: dict[int, Model] = {}
        self.default: Model | None = None
        self.config: mc.ModelConfig | None = None
        self.reason = ""  # a model-level failure (bad config) with no version to hang it on
        self.lock = asyncio.Lock()
        # names of models this one needs (ensemble steps), for explicit-mode bookkeeping
        self.dependencies: set[str] = set()

    def publish(self, versions: dict[int, VersionState]) -> None:
        """Swap in a new version table atomically for readers."""
        ready = {v: s.model for v, s in versions.items() if s.state == READY and s.model}
        self.versions = versions
        self.ready = ready
        self.default = ready[max(ready)] if ready else None


class ModelRepositoryManager:
    def __init__(self, options: "ServerOptions", server: Any = None):
        self.options = options
        self.server = server
        self.repositories: list[str] = list(options.model_repositories)
        self.models: dict[str, ModelEntry] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, options.model_load_thread_count),
            thread_name_prefix="naiad-load",
        )
        self._listeners: list[Callable[[str], None]] = []

    # -- lookups (hot path) --------------------------------------------------------

    def get_model(self, name: str, version: int = -1) -> Model:
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if version < 0:
            model = entry.default
            if model is None:
                # Triton: NOT_FOUND (HTTP 404)
                raise NotFound(f"Request for unknown model: '{name}' has no available versions")
            return model
        model = entry.ready.get(version)
        if model is None:
            state = entry.versions.get(version)
            if state is None:
                raise NotFound(f"Request for unknown model: '{name}' version {version} is not found")
            # Triton: UNAVAILABLE (HTTP 503)
            raise Unavailable(
                f"Request for unknown model: '{name}' version {version} is not at ready state"
            )
        return model

    def model_ready(self, name: str, version: int = -1) -> bool:
        entry = self.models.get(name)
        if entry is None:
            return False
        if version < 0:
            return entry.default is not None
        return version in entry.ready

    def all_ready(self) -> bool:
        """Every model that should be loaded is READY (strict readiness)."""
        for entry in self.models.values():
            if entry.reason:
                return False
            for state in entry.versions.values():
                if state.state != READY:
                    return False
        return True

    def model_dirs(self) -> dict[str, tuple[str, str]]:
        """name -> (repository, model_dir) for every model folder in every repository."""
        found: dict[str, tuple[str, str]] = {}
        dupes: set[str] = set()
        for repo in self.repositories:
            try:
                names = sorted(os.listdir(repo))
            except OSError as exc:
                log.error("unable to read model repository '%s': %s", repo, exc)
                continue
            for name in names:
                path = os.path.join(repo, name)
                if not os.path.isdir(path) or name.startswith("."):
                    continue
                if name in found:
                    dupes.add(name)
                    continue
                found[name] = (repo, path)
        self.duplicates = dupes
        return found

    # -- loading -------------------------------------------------------------------------

    async def load_all(self, names: list[str] | None = None) -> None:
        """Load every model in the repositories (or just ``names``), in parallel."""
        dirs = self.model_dirs()
        wanted = sorted(dirs) if names is None else names
        tasks = [self.load_model(n, _dirs=dirs) for n in wanted]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def load_model(
        self,
        name: str,
        config_override: mc.ModelConfig | None = None,
        files: dict[str, bytes] | None = None,
        _dirs: dict | None = None,
    ) -> None:
        """Load (or reload) a model; raises NaiadError when it ends UNAVAILABLE."""
        dirs = _dirs if _dirs is not None else self.model_dirs()
        if name in getattr(self, "duplicates", set()):
            entry = self._entry(name, "", "")
            entry.reason = (
                f"model '{name}' appears in more than one model repository; a model name must "
                "be unique across repositories"
            )
            entry.publish({})
            raise InvalidArgument(entry.reason)
        loc = dirs.get(name)
        if loc is None:
            raise NotFound(f"failed to load '{name}', failed to poll from model repository")
        repo, model_dir = loc
        entry = self._entry(name, repo, model_dir)
        async with entry.lock:
            await self._load_locked(entry, config_override)
        if entry.reason:
            raise InvalidArgument(entry.reason)
        failed = [s for s in entry.versions.values() if s.state == UNAVAILABLE]
        if failed and not entry.ready:
            raise InvalidArgument(failed[0].reason)

    def _entry(self, name: str, repo: str, model_dir: str) -> ModelEntry:
        entry = self.models.get(name)
        if entry is None:
            entry = ModelEntry(name, repo, model_dir)
            self.models[name] = entry
        else:
            entry.repository, entry.model_dir = repo or entry.repository, model_dir or entry.model_dir
        return entry

    async def _load_locked(self, entry: ModelEntry, override: mc.ModelConfig | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            config, versions = await loop.run_in_executor(
                self._pool, self._prepare_config, entry, override
            )
            if config.platform == "ensemble":
                from naiad.scheduling import ensemble

                await ensemble.prepare(self, entry, config)  # checks, loads what it uses
        except NaiadError as exc:
            entry.reason = exc.message
            log.error("failed to load '%s': %s", entry.name, exc.message)
            # keep serving what was ready (a failed reload keeps the old versions)
            if not entry.ready:
                entry.publish({})
            self._notify(entry.name)
            return
        except Exception as exc:  # an unexpected failure while reading the config
            entry.reason = f"failed to load model '{entry.name}': {as_naiad_error(exc).message}"
            log.exception("failed to load '%s'", entry.name)
            if not entry.ready:
                entry.publish({})
            self._notify(entry.name)
            return
        entry.reason = ""
        old = dict(entry.versions)
        same_config = entry.config is not None and entry.config == config
        keep = {v: s for v, s in old.items() if v in versions and s.state == READY and same_config}
        to_load = [v for v in versions if v not in keep]
        # show the new versions as LOADING beside the ones serving
        staged = dict(old)
        for v in to_load:
            if v not in staged or staged[v].state != READY:
                staged[v] = VersionState(v, LOADING)
        entry.versions = staged
        self._notify(entry.name)

        results = await asyncio.gather(
            *[loop.run_in_executor(self._pool, self._load_version, entry, config, v)
              for v in to_load],
            return_exceptions=True,
        )
        new: dict[int, VersionState] = dict(keep)
        for v, res in zip(to_load, results):
            if isinstance(res, Model):
                new[v] = VersionState(v, READY, model=res)
            else:
                err = as_naiad_error(res) if isinstance(res, BaseException) else NaiadError(str(res))
                reason = err.message
                log.error("failed to load '%s' version %d: %s", entry.name, v, reason)
                prev = old.get(v)
                if prev is not None and prev.state == READY:
                    # a failed reload leaves the serving version in place
                    new[v] = prev
                    entry.reason = reason
                else:
                    new[v] = VersionState(v, UNAVAILABLE, reason)
        retired = [s.model for v, s in old.items()
                   if s.model is not None and (v not in new or new[v].model is not s.model)]
        if not entry.reason:
            entry.config = config
        entry.publish(new)
        self._notify(entry.name)
        for model in retired:
            await self._retire(model)

    def _prepare_config(self, entry: ModelEntry,
                        override: mc.ModelConfig | None) -> tuple[mc.ModelConfig, list[int]]:
        """Read, complete, normalise and validate the config; pick the versions."""
        opts = self.options
        model_dir = entry.model_dir
        text = None
        if override is not None:
            config = mc.ModelConfig()
            config.CopyFrom(override)
            path = "<load request config>"
        else:
            config, path, text = cfg.read_config(model_dir, opts.model_config_name)
            if text is None:
                if not opts.auto_complete_config:
                    raise cfg.ConfigError(
                        "model configuration file not found (auto-complete is disabled by "
                        "--strict-model-config/--disable-auto-complete-config)", path)
                path = model_dir  # later errors name the folder, not a file that is not there
        if not config.name:
            config.name = entry.name
        if config.name != entry.name:
            cfg.validate(config, entry.name, path, text)  # raises the name mismatch
        available = cfg.available_versions(model_dir)
        cfg.resolve_backend(config, model_dir, available)
        if opts.auto_complete_config and config.backend:
            backend = registry.get_backend(config.backend)
            versions = cfg.select_versions(config, available) or available
            vdir = os.path.join(model_dir, str(versions[-1])) if versions else None
            try:
                backend.auto_complete_config(
                    config, model_dir, vdir, self._backend_config(config.backend)
                )
            except NaiadError:
                raise
            except Exception as exc:
                raise cfg.ConfigError(f"auto-complete failed: {exc}", path) from None
        cfg.normalize(config)
        # inputs and outputs are checked per version (_load_version), as Triton does
        cfg.validate(config, entry.name, path, text, io=False)
        entry.config_source = (path, text)
        versions = cfg.select_versions(config, available)
        if not versions:
            raise cfg.ConfigError(
                f"at least one version must be available under the version policy of model "
                f"'{entry.name}'", model_dir)
        return config, versions

    def _backend_config(self, backend: str) -> dict[str, str]:
        merged = dict(self.options.backend_config.get("", {}))
        merged.update(self.options.backend_config.get(backend, {}))
        return merged

    def _load_version(self, entry: ModelEntry, config: mc.ModelConfig, version: int) -> Model:
        """Build one version: backend model, instances, scheduler (runs on the load pool)."""
        version_dir = os.path.join(entry.model_dir, str(version))
        cfg.validate_io(config, *getattr(entry, "config_source", (None, None)))
        vconfig = mc.ModelConfig()
        vconfig.CopyFrom(config)
        if vconfig.platform == "ensemble":
            from naiad.scheduling import ensemble

            return ensemble.load_version(self, entry, vconfig, version, version_dir)
        backend = registry.get_backend(vconfig.backend)
        ctx = ModelLoadContext(
            name=entry.name,
            version=version,
            model_dir=entry.model_dir,
            version_dir=version_dir,
            config=vconfig,
            backend_config=self._backend_config(vconfig.backend),
            server=self.server,
            repository=entry.repository,
        )
        backend_model = backend.load(ctx)
        model = Model(vconfig, version, backend_model, entry.model_dir, version_dir,
                      entry.repository)
        backend_model.model = model
        instances: list[ModelInstance] = []
        inline_param = vconfig.parameters.get("NAIAD_INLINE_EXECUTION")
        allow_inline = not (inline_param is not None and
                            inline_param.string_value.strip().lower() in ("off", "false", "0"))
        try:
            for gi, group in enumerate(vconfig.instance_group):
                kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
                fallback = False
                if kind == "KIND_GPU":
                    log.warning(
                        "model '%s': instance group '%s' asks for KIND_GPU but no GPU is "
                        "available; running it on the CPU", entry.name, group.name)
                    fallback = True
                devices = list(group.gpus) or [0]
                for i in range(group.count):
                    spec = InstanceSpec(
                        name=f"{group.name}_{i}",
                        kind="KIND_CPU" if fallback else kind,
                        device_id=devices[i % len(devices)] if kind == "KIND_GPU" else 0,
                        group_index=gi,
                        index_in_group=i,
                        gpu_fallback=fallback,
                    )
                    instances.append(ModelInstance(model, spec, backend_model.create_instance(spec),
                                                   allow_inline))
        except BaseException:
            for inst in instances:
                inst._finalize()
            try:
                backend_model.finalize()
            except Exception:
                pass
            raise
        model.scheduler = create_scheduler(model, instances)
        return model

    async def _retire(self, model: Model) -> None:
        try:
            await model.stop()
        except Exception:
            log.exception("unloading '%s' version %d failed", model.name, model.version)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"failed to unload '{name}', model is not loaded")
        async with entry.lock:
            old = entry.versions
            staged = {v: VersionState(v, UNLOADING, model=s.model) if s.state == READY else s
                      for v, s in old.items()}
            # new requests stop reaching it at once; accepted ones finish
            entry.versions = staged
            entry.ready = {}
            entry.default = None
            self._notify(name)
            for s in old.values():
                if s.model is not None:
                    await self._retire(s.model)
            entry.publish({v: VersionState(v, UNAVAILABLE, "unloaded") for v in old})
            entry.config = None
            entry.reason = ""
            self._notify(name)
        if unload_dependents and entry.dependencies:
            # the models an ensemble is composed of go too, unless another loaded
            # ensemble still uses them
            from naiad.scheduling import ensemble

            for dep in sorted(entry.dependencies):
                dentry = self.models.get(dep)
                if dentry is None or not dentry.ready or ensemble.dependents(self, dep):
                    continue
                try:
                    await self.unload_model(dep, unload_dependents=True)
                except NaiadError as exc:
                    log.warning("unloading '%s' (used by '%s') failed: %s", dep, name,
                                exc.message)

    async def unload_all(self) -> None:
        await asyncio.gather(*[self.unload_model(n) for n in list(self.models)],
                             return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- reporting -------------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: name, version, state, reason per model version."""
        out: list[dict] = []
        for name in sorted(set(self.models) | set(self.model_dirs())):
            entry = self.models.get(name)
            if entry is None or (not entry.versions and not entry.reason):
                if not ready_only:
                    out.append({"name": name})
                continue
            if entry.reason and not entry.versions:
                if not ready_only:
                    out.append({"name": name, "state": UNAVAILABLE, "reason": entry.reason})
                continue
            for v in sorted(entry.versions):
                s = entry.versions[v]
                if ready_only and s.state != READY:
                    continue
                item = {"name": name, "version": str(v), "state": s.state}
                if s.reason:
                    item["reason"] = s.reason
                out.append(item)
        return out

    def status_rows(self) -> list[tuple[str, str, str]]:
        """(model, version, status) rows for the startup table."""
        rows = []
        for name in sorted(self.models):
            entry = self.models[name]
            if not entry.versions:
                rows.append((name, "-", f"UNAVAILABLE: {entry.reason}" if entry.reason else
                             "UNAVAILABLE"))
                continue
            for v in sorted(entry.versions):
                s = entry.versions[v]
                status = s.state if s.state != UNAVAILABLE else f"UNAVAILABLE: {s.reason}"
                rows.append((name, str(v), status))
        return rows

    # -- change notification (readiness, metrics, poll bookkeeping) ----------------------

    def add_listener(self, fn: Callable[[str], None]) -> None:
        self._listeners.append(fn)

    def _notify(self, name: str) -> None:
        for fn in self._listeners:
            try:
                fn(name)
            except Exception:
                log.exception("model state listener failed")
