"""What ``naiad perf`` learns about the model before loading it: from metadata and config."""

from __future__ import annotations

import dataclasses

from naiad.tools.perf.control import Control


@dataclasses.dataclass
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]  # without the batch dimension
    optional: bool = False


@dataclasses.dataclass
class ModelInfo:
    name: str
    version: str
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    sequence: bool
    decoupled: bool
    ensemble: bool
    response_cache: bool
    top_level_cache: bool
    # composing models of an ensemble, recursively: (name, version as configured, "" = latest)
    composing: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    @property
    def scheduler(self) -> str:
        """perf_analyzer's scheduler types: NONE, DYNAMIC, SEQUENCE, ENSEMBLE, ENSEMBLE_SEQUENCE."""
        if self.ensemble:
            return "ENSEMBLE_SEQUENCE" if self.sequence else "ENSEMBLE"
        return "SEQUENCE" if self.sequence else "NONE"


def _cache_enabled(config: dict) -> bool:
    return bool((config.get("response_cache") or {}).get("enable"))


async def load(control: Control, model: str, version: str = "") -> ModelInfo:
    metadata = await control.model_metadata(model, version)
    config = await control.model_config(model, version)
    mbs = int(config.get("max_batch_size", 0) or 0)
    optional = {i["name"] for i in config.get("input", []) if i.get("optional")}

    def specs(items, skip_batch: bool) -> list[TensorSpec]:
        out = []
        for t in items:
            shape = [int(d) for d in t.get("shape", [])]
            if skip_batch and shape:
                shape = shape[1:]
            out.append(TensorSpec(t["name"], t["datatype"], shape, t["name"] in optional))
        return out

    ensemble = config.get("platform") == "ensemble"
    sequence = "sequence_batching" in config
    decoupled = bool((config.get("model_transaction_policy") or {}).get("decoupled"))
    top_cache = _cache_enabled(config)
    any_cache = top_cache
    composing: list[tuple[str, str]] = []
    if ensemble:
        todo = [(s["model_name"], str(s.get("model_version", -1)))
                for s in (config.get("ensemble_scheduling") or {}).get("step", [])]
        seen: set[str] = set()
        while todo:
            name, ver = todo.pop(0)
            if name in seen:
                continue
            seen.add(name)
            ver = "" if ver in ("-1", "") else ver
            composing.append((name, ver))
            sub = await control.model_config(name, ver)
            any_cache = any_cache or _cache_enabled(sub)
            sequence = sequence or "sequence_batching" in sub
            if sub.get("platform") == "ensemble":
                todo += [(s["model_name"], str(s.get("model_version", -1)))
                         for s in (sub.get("ensemble_scheduling") or {}).get("step", [])]
    versions = metadata.get("versions") or []
    resolved = version or (max(versions, key=lambda v: int(v)) if versions else "")
    return ModelInfo(
        name=metadata.get("name", model), version=str(resolved),
        platform=metadata.get("platform", config.get("platform", "")),
        inputs=specs(metadata.get("inputs", []), mbs > 0),
        outputs=specs(metadata.get("outputs", []), mbs > 0),
        max_batch_size=mbs, sequence=sequence, decoupled=decoupled, ensemble=ensemble,
        response_cache=any_cache, top_level_cache=top_cache, composing=composing,
    )
