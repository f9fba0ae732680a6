"""Which models a model needs loaded before it can serve.

The repository manager asks :func:`dependencies_of` for every config it
loads. An ensemble needs the models its steps name; other features
(for example BLS models that declare what they call) add a resolver with
:func:`register_resolver`. With the answer the manager loads dependencies
first in explicit mode, unloads a model's users when the model goes, and
with ``unload_dependents`` unloads what a model needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from naiad.protocol import model_config_pb2 as mc

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


def dependencies_of(config: mc.ModelConfig) -> set[str]:
    names: set[str] = set()
    for fn in _resolvers:
        names.update(fn(config))
    names.discard(config.name)
    return names
