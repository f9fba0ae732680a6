"""The configurations ``naiad analyze`` tries: model_analyzer's automatic search space.

A :class:`Variant` changes what model_analyzer's automatic search changes:
the instance count, max_batch_size, and dynamic batching (on/off, with a
max_queue_delay and preferred batch sizes). *Brute* search measures every
combination; *quick* search climbs from the smallest configuration to the
neighbour (one step on one axis) that improves the objective most, until no
neighbour does, as model_analyzer's quick search climbs its coordinate space.
"""

from __future__ import annotations

import dataclasses
import itertools

from naiad.protocol import model_config_pb2 as mc


@dataclasses.dataclass(frozen=True)
class Variant:
    instances: int
    max_batch_size: int  # 0: as the model has it (a model that cannot batch)
    dynamic: bool
    queue_delay_us: int = 0
    preferred: tuple[int, ...] = ()
    default: bool = False  # the configuration in the repository, unchanged

    def label(self) -> str:
        if self.default:
            return "default"
        parts = [f"{self.instances} inst"]
        if self.max_batch_size:
            parts.append(f"mbs {self.max_batch_size}")
        if self.dynamic:
            delay = f" {self.queue_delay_us}us" if self.queue_delay_us else ""
            pref = f" pref {','.join(map(str, self.preferred))}" if self.preferred else ""
            parts.append(f"dyn{delay}{pref}")
        return ", ".join(parts)

    def apply(self, base: mc.ModelConfig) -> mc.ModelConfig:
        """The base config with this variant's settings."""
        config = mc.ModelConfig()
        config.CopyFrom(base)
        if self.default:
            return config
        kind = base.instance_group[0].kind if base.instance_group else \
            mc.ModelInstanceGroup.KIND_CPU
        name = base.instance_group[0].name if base.instance_group else ""
        del config.instance_group[:]
        group = config.instance_group.add()
        group.count, group.kind = self.instances, kind
        if name:
            group.name = name
        if self.max_batch_size and base.max_batch_size > 0:
            config.max_batch_size = self.max_batch_size
        config.ClearField("dynamic_batching")
        if self.dynamic and config.max_batch_size > 0:
            db = config.dynamic_batching
            db.SetInParent()
            if self.queue_delay_us:
                db.max_queue_delay_microseconds = self.queue_delay_us
            db.preferred_batch_size.extend(p for p in self.preferred
                                           if p <= config.max_batch_size)
        return config


@dataclasses.dataclass
class Space:
    instances: list[int]
    max_batch_sizes: list[int]
    queue_delays: list[int]
    preferred: list[tuple[int, ...]]
    dynamic_off: bool = True  # also try batchable models without dynamic batching

    def variants(self, base: mc.ModelConfig) -> list[Variant]:
        """Brute search: the repository's config, then every combination."""
        out = [Variant(0, 0, False, default=True)]
        if base.max_batch_size <= 0 or base.HasField("sequence_batching"):
            # not batchable (or scheduled by the sequence batcher): instance counts only
            out += [Variant(n, 0, False) for n in self.instances]
            return _unique(out, base)
        for n, mbs in itertools.product(self.instances, self.max_batch_sizes):
            if self.dynamic_off:
                out.append(Variant(n, mbs, False))
            for delay, pref in itertools.product(self.queue_delays, self.preferred or [()]):
                out.append(Variant(n, mbs, True, delay, pref))
        return _unique(out, base)

    def start(self, base: mc.ModelConfig) -> Variant:
        """Quick search's starting point: the smallest configuration."""
        batch = base.max_batch_size > 0 and not base.HasField("sequence_batching")
        return Variant(self.instances[0], self.max_batch_sizes[0] if batch else 0, batch,
                       self.queue_delays[0] if batch else 0)

    def neighbours(self, v: Variant, base: mc.ModelConfig) -> list[Variant]:
        """One step along each axis (instances, max_batch_size, queue delay, dynamic)."""
        out = []

        def step(field: str, values: list) -> None:
            current = getattr(v, field)
            if current not in values:
                return
            i = values.index(current)
            for j in (i - 1, i + 1):
                if 0 <= j < len(values):
                    out.append(dataclasses.replace(v, **{field: values[j]}))

        step("instances", self.instances)
        if base.max_batch_size > 0 and not base.HasField("sequence_batching"):
            step("max_batch_size", self.max_batch_sizes)
            if v.dynamic:
                step("queue_delay_us", self.queue_delays)
            if self.dynamic_off:
                out.append(dataclasses.replace(v, dynamic=not v.dynamic))
        return _unique(out, base)


def _key(config: mc.ModelConfig) -> bytes:
    from naiad.repository.config import normalize

    c = mc.ModelConfig()
    c.CopyFrom(config)
    normalize(c)
    return c.SerializeToString(deterministic=True)


def _unique(variants: list[Variant], base: mc.ModelConfig) -> list[Variant]:
    """Variants that serve differently (one that equals the repository's config is left out)."""
    seen, out = {_key(base)}, []
    for v in variants:
        if v.default:
            out.append(v)
            continue
        key = _key(v.apply(base))
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def powers_of_two(low: int, high: int) -> list[int]:
    out, v = [], 1
    while v <= high:
        if v >= low:
            out.append(v)
        v *= 2
    return out or [low]
