"""Dependency bookkeeping (the hook ensembles use), through the in-process Server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from naiad import Server
from naiad.core.errors import NaiadError
from naiad.repository import dependencies
from tests.models import add_model


@pytest.fixture
def user_needs_two_models(monkeypatch):
    """'user' depends on 'dep1' and 'dep2'; 'dep2' depends on 'base'."""
    table = {"user": ["dep1", "dep2"], "dep2": ["base"]}
    monkeypatch.setattr(dependencies, "_resolvers",
                        [*dependencies._resolvers, lambda c: table.get(c.name, [])])


def _loaded(server: Server) -> set[str]:
    return {i["name"] for i in server.repository_index(True)}


def test_dependencies_load_first_and_unload_with_their_users(repo, user_needs_two_models):
    for i, name in enumerate(["user", "dep1", "dep2", "base", "bystander"]):
        add_model(repo, name, offset=i)

    async def main():
        server = Server(model_repository=str(repo), model_control_mode="explicit",
                        exit_timeout_secs=10)
        await server.start()
        try:
            await server.load_model("user")
            assert _loaded(server) == {"user", "dep1", "dep2", "base"}
            assert server.manager.dependencies.needs("user") == {"dep1", "dep2"}
            await server.load_model("bystander")

            # unloading a model unloads the models that use it (users first)
            await server.unload_model("base", wait=True)
            assert _loaded(server) == {"dep1", "bystander"}
            states = {i["name"]: i.get("state") for i in server.repository_index()}
            assert states["user"] == states["dep2"] == states["base"] == "UNAVAILABLE"

            # unload_dependents takes down what the model alone used
            await server.load_model("user")
            assert _loaded(server) == {"user", "dep1", "dep2", "base", "bystander"}
            await server.unload_model("user", unload_dependents=True, wait=True)
            assert _loaded(server) == {"bystander"}

            # a dependency that cannot load fails its user with a clear reason
            (repo / "base" / "1" / "model.py").write_text("raise RuntimeError('broken base')\n")
            with pytest.raises(NaiadError, match="depends on 'dep2', which failed to load"):
                await server.load_model("user")
            out = await server.infer_numpy("bystander", {"IN": np.ones(1, np.float32)})
            np.testing.assert_array_equal(out["OUT"], [5.0])
        finally:
            await server.stop()

    asyncio.run(main())


def test_circular_dependencies_are_refused(repo, monkeypatch):
    table = {"x": ["y"], "y": ["x"]}
    monkeypatch.setattr(dependencies, "_resolvers",
                        [*dependencies._resolvers, lambda c: table.get(c.name, [])])
    add_model(repo, "x")
    add_model(repo, "y")

    async def main():
        server = Server(model_repository=str(repo), model_control_mode="explicit",
                        exit_timeout_secs=10)
        await server.start()
        try:
            with pytest.raises(NaiadError, match="circular dependency"):
                await server.load_model("x")
        finally:
            await server.stop()

    asyncio.run(main())


def test_ensemble_dependencies_come_from_its_steps():
    from naiad.protocol import model_config_pb2 as mc

    config = mc.ModelConfig(name="ens", platform="ensemble")
    for name in ("pre", "infer", "pre"):
        config.ensemble_scheduling.step.add(model_name=name)
    assert dependencies.dependencies_of(config) == {"pre", "infer"}
    assert dependencies.dependencies_of(mc.ModelConfig(name="m", backend="python")) == set()
