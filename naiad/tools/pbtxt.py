"""config.pbtxt text as people write it: the usual fields first, short lists on one line."""

from __future__ import annotations

from google.protobuf import text_format

from naiad.protocol import model_config_pb2 as mc

_FIRST = ("name", "platform", "backend", "max_batch_size", "input", "output")


def config_text(config: mc.ModelConfig) -> str:
    """A config as config.pbtxt text, the usual fields first, short lists on one line."""
    parts = []
    names = [f.name for f in config.DESCRIPTOR.fields]
    for field in list(_FIRST) + [n for n in names if n not in _FIRST]:
        part = mc.ModelConfig()
        value = getattr(config, field)
        if config.DESCRIPTOR.fields_by_name[field].message_type is not None and \
                not hasattr(value, "__len__"):
            if not config.HasField(field):
                continue
            getattr(part, field).CopyFrom(value)
        elif hasattr(value, "extend") or hasattr(value, "add") or hasattr(value, "items"):
            if not len(value):
                continue
            if hasattr(value, "items"):
                for k, v in value.items():
                    getattr(part, field)[k].CopyFrom(v)
            else:
                getattr(part, field).extend(value)
        else:
            if not value:
                continue
            setattr(part, field, value)
        parts.append(text_format.MessageToString(part, use_short_repeated_primitives=True))
    return "".join(parts)
