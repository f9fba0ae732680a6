"""The model repository manager: what is loaded, in which state, and why.

Every model has an entry; every version of it a state (LOADING, READY,
UNLOADING, UNAVAILABLE with a reason). Loads run on a bounded thread pool
(``--model-load-thread-count``) so one slow or failing model never delays
another. A reload builds the new versions beside the old ones and swaps the
version table in one assignment once they are ready: requests already
accepted finish on the version they reached, new requests see the new one,
and nothing accepted fails because of the swap. A version whose files and
configuration are unchanged is kept as it is; a change of instance counts
only adds or removes instances; a change whose load fails leaves the old
versions serving.

Model folders come from sources (``storage.py``: local folders, object
storage copied into a local cache) or from files sent with a load request.
Dependencies between models (ensemble steps, declared BLS calls) are one
graph, ``dependencies.py``'s ``DependencyGraph`` (``self.dependencies``):
they are loaded first, and unloading a model unloads the models that use it.
Every version gets its scheduler from ``naiad.scheduling`` with the
server-wide ``SchedulingContext``, and warmup runs here before it is READY.

The inference hot path touches only ``get_model``: two dict lookups.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import shutil
import weakref
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
from naiad.options import parse_bool
from naiad.protocol import model_config_pb2 as mc
from naiad.repository import config as cfg
from naiad.repository import overrides, storage
from naiad.repository.dependencies import DependencyGraph
from naiad.repository.memory import LoadMeter
from naiad.scheduling import create_scheduler, ensemble, make_scheduling_context, warm_up

if TYPE_CHECKING:
    from naiad.core.scheduler import SchedulingContext
    from naiad.options import ServerOptions

log = logging.getLogger("naiad.repository")

LOADING = "LOADING"
READY = "READY"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"
UNLOADED = "unloaded"  # the reason of a version that was unloaded on purpose


@dataclasses.dataclass
class VersionState:
    version: int
    state: str
    reason: str = ""
    model: Model | None = None
    # What the version was built from (folder, configuration without instance
    # counts, files): a reload keeps a READY version whose basis is unchanged.
    basis: tuple | None = None


@dataclasses.dataclass
class _Prepared:
    """A configuration read, completed and validated, and the versions to serve."""

    config: mc.ModelConfig
    versions: list[int]
    model_dir: str
    repository: str
    fingerprint: storage.ModelFingerprint
    config_key: bytes


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
        # the repository it was found in (None: files sent with a load request)
        self.source: storage.RepositorySource | None = None
        # (config override, fingerprint of the files then) a plain load keeps (Triton does)
        self.kept_override: tuple[mc.ModelConfig, Any] | None = None
        # a folder written from a load request's files, removed when no longer served
        self.override_dir = ""
        # the repository's files as the last load attempt saw them (poll mode compares)
        self.polled: storage.ModelFingerprint | None = None
        # False once unloaded: readiness no longer waits for it
        self.wanted = True

    def publish(self, versions: dict[int, VersionState]) -> None:
        """Swap in a new version table atomically for readers."""
        ready = {v: s.model for v, s in versions.items() if s.state == READY and s.model}
        self.versions = versions
        self.ready = ready
        self.default = ready[max(ready)] if ready else None

    def has_models(self) -> bool:
        return any(s.model is not None or s.state == LOADING for s in self.versions.values())


def _config_key(config: mc.ModelConfig) -> bytes:
    """The configuration with instance counts left out (a count change reloads nothing)."""
    c = mc.ModelConfig()
    c.CopyFrom(config)
    for group in c.instance_group:
        group.count = 0
    return c.SerializeToString(deterministic=True)


def _allow_inline(config: mc.ModelConfig) -> bool:
    param = config.parameters.get("NAIAD_INLINE_EXECUTION")
    return param is None or parse_bool(param.string_value) is not False


class ModelRepositoryManager:
    """``server``: the data plane (backends that call back into it, BLS, get it);
    ``scheduling``: the context every scheduler shares (built from the options if
    not given)."""

    def __init__(self, options: "ServerOptions", server: Any = None,
                 scheduling: "SchedulingContext | None" = None):
        self.options = options
        self.server = server
        self.scheduling = scheduling if scheduling is not None else \
            make_scheduling_context(options)
        if self.scheduling.get_model is None:
            self.scheduling.get_model = self.get_model
        self.dependencies = DependencyGraph()
        self.repositories: list[str] = list(options.model_repositories)
        self.sources: list[storage.RepositorySource] = [
            storage.open_repository(r) for r in self.repositories]
        self.models: dict[str, ModelEntry] = {}
        # name -> repositories holding a folder of that name, when more than one
        self.duplicates: dict[str, list[str]] = {}
        self._listing: dict[str, list[str]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, options.model_load_thread_count),
            thread_name_prefix="naiad-load",
        )
        self._listeners: list[Callable[[str], None]] = []
        self._tasks: set[asyncio.Future] = set()
        # which models stay loaded (residency.Residency, --model-load-on-demand): every
        # version load goes through its load_versions (memory budget, load metrics)
        self.residency: Any = None
        # model version -> the LoadMeter of its load (memory.py)
        self.load_costs: weakref.WeakKeyDictionary[Model, LoadMeter] = \
            weakref.WeakKeyDictionary()

    # -- lookups (hot path) --------------------------------------------------------

    def get_model(self, name: str, version: int = -1) -> Model:
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if version < 0:
            model = entry.default
            if model is None:
                raise NotFound(
                    f"Request for unknown model: '{name}' has no available versions")
            return model
        model = entry.ready.get(version)
        if model is None:
            state = entry.versions.get(version)
            if state is None:
                raise NotFound(f"Request for unknown model: '{name}' version {version} is not found")
            raise Unavailable(
                f"Request for unknown model: '{name}' version {version} is not at ready state"
            )
        return model

    def ready_models(self, name: str | None = None) -> list[Model]:
        """The serving versions of ``name`` by version (of every model by name when None)."""
        names = sorted(self.models) if name is None else [name]
        out: list[Model] = []
        for n in names:
            entry = self.models.get(n)
            if entry is not None:
                ready = entry.ready
                out += [ready[v] for v in sorted(ready)]
        return out

    def ready_versions(self, name: str) -> list[int]:
        entry = self.models.get(name)
        return sorted(entry.ready) if entry is not None else []

    def model_ready(self, name: str, version: int = -1) -> bool:
        entry = self.models.get(name)
        if entry is None:
            return False
        if version < 0:
            return entry.default is not None
        return version in entry.ready

    def all_ready(self) -> bool:
        """Every model meant to be loaded serves, and no version failed (strict readiness).

        A model being reloaded counts as ready: its old version serves until
        the new one takes over. Unloaded models do not count.
        """
        for entry in self.models.values():
            if not entry.wanted:
                continue
            if entry.default is None:
                return False
            for state in entry.versions.values():
                if state.state == UNAVAILABLE and state.reason != UNLOADED:
                    return False
        return True

    # -- repositories ---------------------------------------------------------------

    def check_repositories(self) -> None:
        """Raise if a repository cannot be read at all (blocking: remote ones are asked)."""
        for source in self.sources:
            source.check()

    def discover(self) -> dict[str, storage.RepositorySource]:
        """name -> source for every model folder in every repository (blocking)."""
        found: dict[str, storage.RepositorySource] = {}
        where: dict[str, list[str]] = {}
        for source in self.sources:
            names = source.list_models()
            self._listing[source.url] = names
            for name in names:
                where.setdefault(name, []).append(source.url)
                found.setdefault(name, source)
        self.duplicates = {n: urls for n, urls in where.items() if len(urls) > 1}
        return found

    async def _discover(self) -> dict[str, storage.RepositorySource]:
        if any(s.remote for s in self.sources):
            return await asyncio.get_running_loop().run_in_executor(None, self.discover)
        return self.discover()

    def model_dirs(self) -> dict[str, tuple[str, str]]:
        """name -> (repository, model folder) for every model folder (local listing)."""
        return {n: (s.url, s.location(n)) for n, s in self.discover().items()}

    def in_repository(self, name: str) -> bool:
        """Whether a repository holds a folder for ``name`` (local listings are read
        again; remote ones as last listed)."""
        return name in self._known_names()

    def _known_names(self) -> set[str]:
        names: set[str] = set()
        for source in self.sources:
            if source.remote:
                names.update(self._listing.get(source.url, ()))
            else:
                names.update(source.list_models())
        return names

    # -- loading -------------------------------------------------------------------------

    async def load_all(self, names: list[str] | None = None) -> None:
        """Load every model in the repositories (or just ``names``), in parallel."""
        found = await self._discover()
        wanted = sorted(found) if names is None else list(dict.fromkeys(names))
        tasks = [self.load_model(n, _found=found) for n in wanted]
        if tasks:
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for name, res in zip(wanted, results):
                if isinstance(res, NaiadError) and name not in self.models:
                    # asked for by name (--load-model) but not found: say so in the table
                    entry = self._entry(name)
                    entry.reason = res.message
                    entry.publish({})

    async def load_model(
        self,
        name: str,
        config_override: mc.ModelConfig | None = None,
        files: dict[str, bytes] | None = None,
        _found: dict | None = None,
    ) -> None:
        """Load (or reload) a model; raises NaiadError when the load failed.

        ``files``: model files sent with the request (paths relative to the
        model folder), served from a folder of their own instead of the
        repository; they need ``config_override``.
        """
        override_dir = ""
        source: storage.RepositorySource | None = None
        if files:
            if config_override is None:
                raise InvalidArgument(
                    "Load parameter 'config' must be specified for model file override")
            try:
                override_dir = await asyncio.get_running_loop().run_in_executor(
                    None, storage.write_override_files, name, files)
            except (NaiadError, OSError) as exc:
                raise overrides.file_error(name, exc) from None
        else:
            found = _found if _found is not None else await self._discover()
            if name in self.duplicates:
                entry = self._entry(name)
                entry.wanted = True
                entry.reason = (
                    f"model '{name}' appears in more than one model repository "
                    f"({', '.join(self.duplicates[name])}); a model name must be unique across "
                    "repositories")
                if not entry.ready:
                    entry.publish({})
                self._notify(name)
                raise InvalidArgument(entry.reason)
            source = found.get(name)
            if source is None:
                raise InvalidArgument(
                    f"failed to load '{name}', failed to poll from model repository")
            if config_override is None:
                config_override = await self._kept_override(name, source)
        entry = self._entry(name)
        async with entry.lock:
            error = await self._load_locked(entry, source, override_dir, config_override)
            if not error:
                # a config-only override is what a plain load keeps while nothing changes
                entry.kept_override = (config_override, entry.polled) if (
                    config_override is not None and not files) else None
        if error:
            raise InvalidArgument(error)

    async def _kept_override(self, name: str,
                             source: storage.RepositorySource) -> mc.ModelConfig | None:
        """The config override a plain load of ``name`` keeps, as Triton does: the one the
        serving versions were loaded with, while the model's files have not changed."""
        entry = self.models.get(name)
        if entry is None or entry.kept_override is None or not entry.ready:
            return None
        config, polled = entry.kept_override
        current = await asyncio.get_running_loop().run_in_executor(
            None, source.fingerprint, name)
        if entry.source is not source or current != polled:
            return None  # the repository changed: its files (and config) win
        return config

    def _entry(self, name: str, repo: str = "", model_dir: str = "") -> ModelEntry:
        entry = self.models.get(name)
        if entry is None:
            entry = ModelEntry(name, repo, model_dir)
            self.models[name] = entry
        return entry

    async def _load_locked(self, entry: ModelEntry, source: storage.RepositorySource | None,
                           override_dir: str, override: mc.ModelConfig | None) -> str:
        """Load under the entry's lock; returns the failure message ("" on success)."""
        loop = asyncio.get_running_loop()
        name = entry.name
        entry.wanted = True
        try:
            prep = await loop.run_in_executor(
                self._pool, self._prepare, entry, source, override_dir, override)
        except Exception as exc:  # noqa: BLE001 - a bad model must not break the others
            if override_dir:
                shutil.rmtree(override_dir, ignore_errors=True)
            if isinstance(exc, NaiadError):
                reason = exc.message
            else:
                log.exception("failed to load '%s'", name)
                reason = f"failed to load model '{name}': {as_naiad_error(exc).message}"
            log.error("failed to load '%s': %s", name, reason, extra={"model": name})
            entry.reason = reason
            if not entry.ready:
                # keep records of unloaded versions; nothing serves
                entry.publish({v: s for v, s in entry.versions.items()
                               if s.state == UNAVAILABLE and s.reason == UNLOADED})
            self._notify(name)
            return reason

        # models this one needs come first
        missing = ""
        is_ensemble = prep.config.platform == "ensemble"
        if is_ensemble:
            try:
                ensemble.validate_config(prep.config)
            except NaiadError as exc:
                missing = exc.message
        if not missing:
            missing = await self.dependencies.load_dependencies(
                self, prep.config, self.load_model,
                bool(getattr(self.server, "started", False)))
        if not missing and is_ensemble:
            try:  # the steps' tensors against the models now serving them
                ensemble.check_steps(prep.config, self.get_model)
            except NaiadError as exc:
                missing = exc.message
        if missing:
            if override_dir:
                shutil.rmtree(override_dir, ignore_errors=True)
            entry.reason = missing
            log.error("failed to load '%s': %s", name, missing, extra={"model": name})
            if not entry.ready:
                entry.publish({v: VersionState(v, UNAVAILABLE, missing) for v in prep.versions})
            self._notify(name)
            return f"load failed for model '{name}': {missing}"

        entry.source = source
        entry.repository = prep.repository
        entry.model_dir = prep.model_dir
        config, versions = prep.config, prep.versions
        old = dict(entry.versions)
        basis = {v: (prep.model_dir, prep.config_key, prep.fingerprint.shared,
                     prep.fingerprint.version(v)) for v in versions}
        keep: dict[int, VersionState] = {}
        for v in versions:
            s = old.get(v)
            if s is not None and s.state == READY and s.basis == basis[v] and s.model is not None:
                if await self._resize_instances(s.model, config):
                    keep[v] = s
        to_load = [v for v in versions if v not in keep]

        for v in to_load:
            log.info("loading: %s:%d", name, v, extra={"model": name})
        # show the new versions as LOADING beside the ones serving
        if to_load:
            staged = dict(old)
            for v in to_load:
                if v not in staged or staged[v].state != READY:
                    staged[v] = VersionState(v, LOADING)
            entry.versions = staged
            self._notify(name)

        def build(v: int) -> asyncio.Future:
            return loop.run_in_executor(self._pool, self._load_version_measured, entry, config,
                                        v)

        if self.residency is not None and to_load:
            results = await self.residency.load_versions(entry, config, to_load, build)
        else:
            results = await asyncio.gather(*[build(v) for v in to_load],
                                           return_exceptions=True)
        new: dict[int, VersionState] = dict(keep)
        errors: list[str] = []
        for v, res in zip(to_load, results):
            if isinstance(res, Model):
                new[v] = VersionState(v, READY, model=res, basis=basis[v])
                continue
            err = as_naiad_error(res) if isinstance(res, BaseException) else NaiadError(str(res))
            reason = err.message
            log.error("failed to load '%s' version %d: %s", name, v, reason,
                      extra={"model": name})
            errors.append(f"version {v} is at UNAVAILABLE state: {reason};\n")
            prev = old.get(v)
            if prev is not None and prev.state == READY:
                new[v] = prev  # a failed reload leaves the serving version in place
            else:
                new[v] = VersionState(v, UNAVAILABLE, reason)
        retired: list[Model] = []
        retiring: dict[int, VersionState] = {}
        for v, s in old.items():
            if v in new:
                if s.model is not None and new[v].model is not s.model:
                    retired.append(s.model)  # replaced in place by a new build
                continue
            if s.state == READY and s.model is not None:
                if errors:
                    new[v] = s  # a change that failed keeps what was serving
                else:
                    retiring[v] = VersionState(v, UNLOADING, model=s.model)
            elif s.state == UNAVAILABLE and s.reason == UNLOADED:
                new[v] = s  # Triton keeps the record of an unloaded version
        if errors:
            log.info("failed to load '%s'", name, extra={"model": name})
        elif to_load:
            log.info("successfully loaded '%s'", name, extra={"model": name})
        entry.reason = "" if not errors else "".join(errors)
        if not errors or entry.config is None:
            entry.config = config
        published = dict(new)
        published.update(retiring)
        entry.publish(published)
        self._notify(name)
        for model in retired:
            await self._retire(model)
        if retiring:
            for s in retiring.values():
                await self._retire(s.model)
            final = dict(entry.versions)
            for v, s in retiring.items():
                cur = final.get(v)
                if cur is not None and cur.model is s.model:
                    final[v] = VersionState(v, UNAVAILABLE, UNLOADED)
            entry.publish(final)
            self._notify(name)
        if override_dir:
            in_use = {s.model.model_dir for s in entry.versions.values() if s.model is not None}
            if override_dir in in_use:
                previous, entry.override_dir = entry.override_dir, override_dir
                if previous and previous != override_dir:
                    self._drop_unused_override(entry, previous)
            else:
                shutil.rmtree(override_dir, ignore_errors=True)
        else:
            self._drop_unused_override(entry)  # the repository's files replaced request files
        if errors:
            return f"load failed for model '{name}': " + "".join(errors)
        return ""

    def _drop_unused_override(self, entry: ModelEntry, folder: str = "") -> None:
        """Remove a folder written from request files once no served version uses it."""
        folder = folder or entry.override_dir
        if not folder:
            return
        in_use = {s.model.model_dir for s in entry.versions.values() if s.model is not None}
        if folder not in in_use:
            shutil.rmtree(folder, ignore_errors=True)
            if entry.override_dir == folder:
                entry.override_dir = ""

    def _prepare(self, entry: ModelEntry, source: storage.RepositorySource | None,
                 override_dir: str, override: mc.ModelConfig | None) -> _Prepared:
        """Fetch, read, complete, normalise and validate the config; pick the versions.

        Runs on the load pool (it may download a remote model).
        """
        if override_dir:
            model_dir, repository = override_dir, ""
        else:
            assert source is not None
            model_dir, repository = source.materialize(entry.name), source.url
        fingerprint = storage.local_fingerprint(model_dir)
        if source is not None:
            entry.polled = fingerprint if not source.remote else source.fingerprint(entry.name)
        config = self._read_config(entry, model_dir, override)
        versions = cfg.versions_to_load(config, model_dir, entry.name)
        return _Prepared(config, versions, model_dir, repository, fingerprint,
                         _config_key(config))

    def _read_config(self, entry: ModelEntry, model_dir: str,
                     override: mc.ModelConfig | None) -> mc.ModelConfig:
        opts = self.options
        config, path, text = cfg.load_model_config(
            model_dir, entry.name, config_name=opts.model_config_name,
            auto_complete=opts.auto_complete_config, backend_config=self._backend_config,
            override=override)
        entry.config_source = (path, text)
        return config

    def _backend_config(self, backend: str) -> dict[str, str]:
        merged = dict(self.options.backend_config.get("", {}))
        merged.update(self.options.backend_config.get(backend, {}))
        return merged

    def _load_version_measured(self, entry: ModelEntry, config: mc.ModelConfig,
                               version: int) -> Model:
        """``_load_version``, with what the load cost in memory in the version's statistics."""
        # a version with worker processes (EXECUTION_MODE: process) grows them too
        with LoadMeter(children="EXECUTION_MODE" in config.parameters) as meter:
            model = self._load_version(entry, config, version)
        if model.backend_model is not None:
            try:
                meter.reported = int(model.backend_model.memory_bytes() or 0)
            except Exception:  # noqa: BLE001 - a backend's report is a hint
                log.debug("model '%s': memory_bytes() failed", entry.name, exc_info=True)
        model.stats.memory_usage = meter.usage()
        self.load_costs[model] = meter
        return model

    def _load_version(self, entry: ModelEntry, config: mc.ModelConfig, version: int) -> Model:
        """Build one version: backend model, instances, scheduler (runs on the load pool)."""
        version_dir = os.path.join(entry.model_dir, str(version))
        cfg.validate_io(config, *getattr(entry, "config_source", (None, None)))
        vconfig = mc.ModelConfig()
        vconfig.CopyFrom(config)
        if vconfig.platform == "ensemble":  # no backend: the scheduler runs the steps
            model = Model(vconfig, version, None, entry.model_dir, version_dir,
                          entry.repository)
            model.scheduler = create_scheduler(model, [], self.scheduling)
            return model
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
        try:
            for gi, group in enumerate(vconfig.instance_group):
                instances += self._create_instances(model, gi, range(group.count))
        except BaseException:
            for inst in instances:
                inst._finalize()
            try:
                backend_model.finalize()
            except Exception:
                pass
            raise
        # the scheduler, with the server-wide rate limiter, response cache, ...;
        # it finalizes the instances if it fails
        model.scheduler = create_scheduler(model, instances, self.scheduling)
        try:
            self._warm_up(model)
        except BaseException:
            self._stop_unready(model)
            raise
        return model

    def _create_instances(self, model: Model, group_index: int, indices) -> list[ModelInstance]:
        """The instances ``indices`` of one instance group (the version's config)."""
        vconfig = model.config
        group = vconfig.instance_group[group_index]
        backend_model = model.backend_model
        allow_inline = _allow_inline(vconfig)
        kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
        fallback = False
        if kind == "KIND_GPU":
            log.warning(
                "model '%s': instance group '%s' asks for KIND_GPU but no GPU is "
                "available; running it on the CPU", model.name, group.name)
            fallback = True
        devices = list(group.gpus) or [0]
        out: list[ModelInstance] = []
        try:
            for i in indices:
                spec = InstanceSpec(
                    name=f"{group.name}_{i}",
                    kind="KIND_CPU" if fallback else kind,
                    device_id=devices[i % len(devices)] if kind == "KIND_GPU" else 0,
                    group_index=group_index,
                    index_in_group=i,
                    gpu_fallback=fallback,
                )
                out.append(ModelInstance(model, spec, backend_model.create_instance(spec),
                                         allow_inline))
        except BaseException:
            for inst in out:
                inst._finalize()
            raise
        return out

    def _warm_up(self, model: Model) -> None:
        """``model_warmup`` runs here: after the instances exist, before the version is
        READY; a version whose warmup fails does not load."""
        warm_up(model)

    def _stop_unready(self, model: Model) -> None:
        """Tear down a version that never became READY (on the load pool)."""
        try:
            asyncio.run(model.stop())
        except Exception:
            log.exception("cleaning up '%s' version %d failed", model.name, model.version)

    async def _resize_instances(self, model: Model, config: mc.ModelConfig) -> bool:
        """Match a served version's instance counts to ``config`` without reloading it.

        False when the scheduler cannot change its instances (the version is
        then reloaded instead).
        """
        groups = model.config.instance_group
        if len(groups) != len(config.instance_group):
            return False
        if all(g.count == n.count for g, n in zip(groups, config.instance_group)):
            return True
        sched = model.scheduler
        if not sched.can_resize:
            return False
        loop = asyncio.get_running_loop()
        for gi, (group, target) in enumerate(zip(groups, config.instance_group)):
            have = sorted((i for i in sched.instances if i.spec.group_index == gi),
                          key=lambda i: i.spec.index_in_group)
            want = target.count
            if want > len(have):
                used = {i.spec.index_in_group for i in have}
                indices = []
                k = 0
                while len(indices) < want - len(have):
                    if k not in used:
                        indices.append(k)
                    k += 1
                group.count = want  # before creating: instances read the config
                try:
                    new = await loop.run_in_executor(
                        self._pool, self._create_instances, model, gi, indices)
                except Exception as exc:  # noqa: BLE001
                    group.count = len(have)
                    log.error("adding instances to '%s' failed: %s", model.name, exc)
                    return False
                sched.add_instances(new)
                log.info("model '%s' version %d: instance group '%s' grew to %d", model.name,
                         model.version, group.name, want)
            elif want < len(have):
                await sched.remove_instances(have[want:])
                group.count = want
                log.info("model '%s' version %d: instance group '%s' shrank to %d",
                         model.name, model.version, group.name, want)
        return True

    async def _retire(self, model: Model) -> None:
        try:
            await model.stop()
        except Exception:
            log.exception("unloading '%s' version %d failed", model.name, model.version,
                          extra={"model": model.name})
            return
        log.info("successfully unloaded '%s' version %d", model.name, model.version,
                 extra={"model": model.name})

    # -- unloading ---------------------------------------------------------------------------

    async def unload_model(self, name: str, unload_dependents: bool = False,
                           wait: bool = True) -> None:
        """Unload a model, the models that use it, and (``unload_dependents``) what it uses.

        New requests stop reaching the models at once; accepted ones finish,
        then the models are finalized. ``wait=False`` returns as soon as
        ``name`` no longer takes requests (Triton's API does not wait for the
        drain); the rest goes on in the background. Unloading a model that is
        not loaded does nothing, as in Triton.
        """
        order = self._unload_order(name, unload_dependents)
        if not order:
            return
        staged = asyncio.Event()
        task = asyncio.ensure_future(self._unload_in_order(order, name, staged))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if wait:
            await task
        else:
            await staged.wait()

    async def unload_idle(self, name: str, grace: float = 0.0) -> bool:
        """Unload ``name`` now unless something holds it: a load or unload of it in
        progress, or a loaded model that uses it (evictions and idle unloads); returns
        whether it did. The caller has checked that nothing is queued or executing.

        New requests stop reaching it at once; ``grace`` seconds later (a request that
        looked the model up just before gets into its queue) it drains and is finalized.
        """
        entry = self.models.get(name)
        if entry is None or entry.lock.locked() or not entry.has_models():
            return False
        if self.dependencies.users_of(name, self._loaded):
            return False
        async with entry.lock:  # free: taken without waiting; held until it is gone
            models = self._stage_unload(entry)
            if grace > 0:
                await asyncio.sleep(grace)
            await self._finish_unload_locked(entry, models)
        return True

    def _loaded(self, name: str) -> bool:
        entry = self.models.get(name)
        return entry is not None and entry.has_models()

    def _unload_order(self, name: str, unload_dependents: bool) -> list[str]:
        if name not in self.models:
            return []
        return self.dependencies.unload_order(name, unload_dependents, self._loaded)

    async def _unload_in_order(self, order: list[str], name: str,
                               staged: asyncio.Event) -> None:
        try:
            for n in order:
                entry = self.models.get(n)
                if entry is None:
                    continue
                async with entry.lock:
                    models = self._stage_unload(entry)
                if n == order[-1]:
                    # every model of the order now refuses new requests (users were
                    # drained before the models they call stopped taking requests)
                    staged.set()
                await self._finish_unload(entry, models)
        finally:
            staged.set()

    def _stage_unload(self, entry: ModelEntry) -> list[tuple[int, Model]]:
        """Stop routing to the entry's versions (they show UNLOADING)."""
        models = [(v, s.model) for v, s in entry.versions.items()
                  if s.model is not None and s.state in (READY, UNLOADING)]
        staged = {v: VersionState(v, UNLOADING, model=s.model)
                  if s.model is not None and s.state == READY else s
                  for v, s in entry.versions.items()}
        entry.wanted = False
        entry.kept_override = None  # after an unload, a plain load reads the repository
        entry.versions = staged
        entry.ready = {}
        entry.default = None
        entry.reason = ""
        self._notify(entry.name)
        return models

    async def _finish_unload(self, entry: ModelEntry, models: list[tuple[int, Model]]) -> None:
        async with entry.lock:
            await self._finish_unload_locked(entry, models)

    async def _finish_unload_locked(self, entry: ModelEntry,
                                    models: list[tuple[int, Model]]) -> None:
        await asyncio.gather(*[self._retire(m) for _, m in models])
        final = dict(entry.versions)
        for v, m in models:
            cur = final.get(v)
            if cur is not None and cur.model is m:
                final[v] = VersionState(v, UNAVAILABLE, UNLOADED)
        entry.publish(final)
        if not entry.wanted:
            entry.config = None
        self._drop_unused_override(entry)
        self._notify(entry.name)

    async def unload_all(self) -> None:
        """Unload everything, users before the models they use; then stop the pool."""
        loaded = [n for n, e in self.models.items() if e.has_models()]
        for layer in self.dependencies.unload_layers(loaded):
            await asyncio.gather(*[self.unload_model(n, wait=True) for n in layer],
                                 return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for entry in self.models.values():
            self._drop_unused_override(entry)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def forget(self, name: str) -> None:
        """Unload a model whose folder left the repository and drop its entry (poll mode)."""
        await self.unload_model(name, wait=True)
        entry = self.models.get(name)
        if entry is not None and not entry.wanted and not entry.has_models():
            self.models.pop(name, None)
            self.dependencies.forget(name)
            self._notify(name)

    # -- reporting -------------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: name, version, state, reason per model version.

        Every model folder in every repository appears (by name alone while
        never loaded), and so does every model loaded from request files.
        """
        out: list[dict] = []
        for name in sorted(set(self.models) | self._known_names()):
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
