"""naiad.Server and EmbeddedServer serve models without any socket."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from naiad import Server
from naiad.core.errors import InvalidArgument, NaiadError
from naiad.embedded import EmbeddedServer
from tests.conftest import EXAMPLES


def test_embedded_server_infers_with_numpy():
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.array([4, 3, 2, 1], dtype=np.float32)
    with EmbeddedServer(model_repository=str(EXAMPLES), exit_timeout_secs=5) as server:
        assert server.ready()
        assert server.model_ready("add_sub")
        out = server.infer("add_sub", {"INPUT0": a, "INPUT1": b})
        np.testing.assert_array_equal(out["OUTPUT0"], a + b)
        np.testing.assert_array_equal(out["OUTPUT1"], a - b)
        only = server.infer("add_sub", {"INPUT0": a, "INPUT1": b}, outputs=["OUTPUT1"])
        assert list(only) == ["OUTPUT1"]
        assert server.model_metadata("add_sub")["platform"] == "python"
        with pytest.raises(InvalidArgument, match="unexpected shape"):
            server.infer("add_sub", {"INPUT0": a[:3], "INPUT1": b[:3]})
        with pytest.raises(NaiadError, match="unknown model"):
            server.infer("missing", {"INPUT0": a})


def test_async_server_api():
    async def main():
        async with Server(model_repository=str(EXAMPLES), exit_timeout_secs=5) as server:
            assert server.ready()
            a = np.ones(4, dtype=np.float32)
            results = await asyncio.gather(*[
                server.infer_numpy("add_sub", {"INPUT0": a * i, "INPUT1": a}) for i in range(20)
            ])
            for i, out in enumerate(results):
                np.testing.assert_array_equal(out["OUTPUT0"], a * i + a)
            stats = server.model_statistics("add_sub")["model_stats"][0]
            assert stats["inference_count"] == 20
            assert stats["execution_count"] == 20
            assert stats["inference_stats"]["success"]["count"] == 20

    asyncio.run(main())
