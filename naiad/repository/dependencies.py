"""The dependency graph of the models: what each needs, loaded first, unloaded after.

One graph per repository manager, as Triton's model repository manager keeps
one. A model needs the models :func:`dependencies_of` its config names: an
ensemble the models its steps call; other features (for example BLS models
that declare what they call) add a resolver with :func:`register_resolver`.
With the graph the manager

* loads what a model needs before the model (``load_dependencies``: one
  cycle check, then each dependency loaded or waited for),
* unloads a model's users before the model, and with ``unload_dependents``
  what it alone needed (``unload_order``),
* unloads everything users-first at shutdown (``unload_layers``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from naiad.core.errors import NaiadError
from naiad.protocol import model_config_pb2 as mc

if TYPE_CHECKING:
    from naiad.repository.manager import ModelRepositoryManager

Resolver = Callable[[mc.ModelConfig], Iterable[str]]


def _ensemble_steps(config: mc.ModelConfig) -> Iterable[str]:
    if config.platform != "ensemble":
        return ()
    return [step.model_name for step in config.ensemble_scheduling.step if step.model_name]


_resolvers: list[Resolver] = [_ensemble_steps]


def register_resolver(fn: Resolver) -> None:
    """Add a function config -> names of models that config depends on."""
    if fn not in _resolvers:
        _resolvers.append(fn)


def _ordered_dependencies(config: mc.ModelConfig) -> list[str]:
    """The models ``config`` needs, in the order its config names them, once each."""
    names: dict[str, None] = {}
    for fn in _resolvers:
        names.update(dict.fromkeys(fn(config)))
    names.pop(config.name, None)
    return list(names)


def dependencies_of(config: mc.ModelConfig) -> set[str]:
    """The models ``config`` needs."""
    return set(_ordered_dependencies(config))


class DependencyGraph:
    """model name -> the names of the models it needs (as last loaded)."""

    def __init__(self) -> None:
        self._needs: dict[str, frozenset[str]] = {}

    def needs(self, name: str) -> frozenset[str]:
        return self._needs.get(name, frozenset())

    def set_needs(self, name: str, deps: Iterable[str]) -> None:
        self._needs[name] = frozenset(deps)

    def forget(self, name: str) -> None:
        self._needs.pop(name, None)

    def path(self, start: str, target: str) -> list[str] | None:
        """A chain of needs from ``start`` to ``target`` (both included), if any."""
        seen: set[str] = set()
        todo: list[tuple[str, list[str]]] = [(start, [start])]
        while todo:
            cur, chain = todo.pop()
            if cur == target:
                return chain
            if cur in seen:
                continue
            seen.add(cur)
            for nxt in sorted(self.needs(cur)):
                todo.append((nxt, chain + [nxt]))
        return None

    # -- loading --------------------------------------------------------------------

    async def load_dependencies(self, manager: ModelRepositoryManager, config: mc.ModelConfig,
                                load: Callable[[str], Awaitable[None]],
                                started: bool) -> str:
        """Record what ``config`` needs and make each one serve; returns the failure ("").

        A dependency whose load is in progress is waited for; one not serving
        is loaded with ``load`` (what Triton's explicit mode does), except that
        during startup (``started`` False) one that already failed is not tried
        again. Messages are Triton's (ensembles) or name the chain.
        """
        name = config.name
        deps = _ordered_dependencies(config)
        self.set_needs(name, deps)
        ensemble = config.platform == "ensemble"
        if ensemble:
            dirs = manager.model_dirs()
            unknown = [d for d in deps if d not in dirs and d not in manager.models]
            if unknown:
                return (f"ensemble {name} contains models that are not available or "
                        f"ambiguous: {', '.join(unknown)}")
        for dep in deps:  # one cycle check, before anything loads
            chain = self.path(dep, name)
            if chain is not None:
                if ensemble:
                    return (f"circular dependency between ensembles: '{name}' and '{dep}' "
                            "depend on each other")
                return f"circular dependency between models: {' -> '.join([name] + chain)}"
        for dep in deps:
            failure = ""
            entry = manager.models.get(dep)
            if entry is not None and entry.lock.locked():
                async with entry.lock:  # a load in progress: wait for its outcome
                    pass
                entry = manager.models.get(dep)
            if entry is None or (not entry.ready and (started or not entry.reason)):
                try:
                    await load(dep)
                except NaiadError as exc:
                    failure = exc.message
                entry = manager.models.get(dep)
            if entry is not None and entry.ready:
                continue
            if ensemble:
                reason = ""
                if entry is not None:
                    reason = entry.reason or next(
                        (s.reason for s in entry.versions.values() if s.reason), "")
                message = f"ensemble '{name}' depends on '{dep}' which has no loaded version."
                if reason:
                    message += f" Model '{dep}' loading failed with error: {reason}"
                return message
            if failure:
                return f"model '{name}' depends on '{dep}', which failed to load: {failure}"
            return f"model '{name}' depends on '{dep}', which has no ready version"
        return ""

    # -- unloading ------------------------------------------------------------------

    def users_of(self, name: str, loaded: Callable[[str], bool]) -> list[str]:
        """The loaded models that need ``name``."""
        return sorted(n for n, deps in self._needs.items()
                      if n != name and name in deps and loaded(n))

    def unload_order(self, name: str, unload_dependents: bool,
                     loaded: Callable[[str], bool]) -> list[str]:
        """Users first (they call the model), then the model, then (``unload_dependents``)
        what it alone needed."""
        order: list[str] = []

        def add_with_users(n: str, path: tuple[str, ...]) -> None:
            for user in self.users_of(n, loaded):
                if user not in order and user not in path:
                    add_with_users(user, path + (user,))
            if n not in order:
                order.append(n)

        add_with_users(name, (name,))
        if unload_dependents:
            pending = sorted(self.needs(name))
            while pending:
                dep = pending.pop(0)
                if dep in order or not loaded(dep):
                    continue
                if [u for u in self.users_of(dep, loaded) if u not in order]:
                    continue  # still used by a model that stays
                order.append(dep)
                pending += sorted(self.needs(dep))
        return order

    def unload_layers(self, names: Iterable[str]) -> list[list[str]]:
        """``names`` in layers to unload one after another: no model before its users."""
        remaining = set(names)
        layers = []
        while remaining:
            layer = [n for n in remaining
                     if not any(n in self.needs(m) for m in remaining if m != n)]
            if not layer:  # a cycle: the rest together
                layer = list(remaining)
            layers.append(sorted(layer))
            remaining -= set(layer)
        return layers
