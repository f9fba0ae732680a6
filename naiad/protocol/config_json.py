"""ModelConfig <-> JSON, as Triton writes and reads it.

``config_to_dict`` is what the HTTP config endpoint (and a python model's
``args["model_config"]``) shows; ``parse_config_json`` reads the repository
load API's ``config`` parameter.
"""

from __future__ import annotations

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from naiad.core.errors import InvalidArgument
from naiad.protocol.model_config_pb2 import ModelConfig


def parse_config_json(text: str | bytes) -> ModelConfig:
    """A config given as JSON (the repository load API's ``config`` parameter)."""
    config = ModelConfig()
    try:
        json_format.Parse(text, config, ignore_unknown_fields=False)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise InvalidArgument(f"failed to parse model configuration JSON: {exc}") from None
    return config


_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _triton_json(desc, obj: dict) -> dict:
    """Triton's rendering of a message dict: fields in declaration order, 64-bit
    integers as JSON numbers (json_format writes them as strings)."""
    out = {}
    for field in desc.fields:
        key = field.name
        if key not in obj:
            continue
        value = obj[key]
        if field.type in _INT64_TYPES:
            value = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            mdesc = field.message_type
            if mdesc.GetOptions().map_entry:
                vfield = mdesc.fields_by_name["value"]
                if vfield.type == FieldDescriptor.TYPE_MESSAGE:
                    value = {k: _triton_json(vfield.message_type, v) for k, v in value.items()}
                elif vfield.type in _INT64_TYPES:
                    value = {k: int(v) for k, v in value.items()}
            elif isinstance(value, list):
                value = [_triton_json(mdesc, v) for v in value]
            elif isinstance(value, dict):
                value = _triton_json(mdesc, value)
        out[key] = value
    return out


def config_to_dict(config: ModelConfig) -> dict:
    """The config as Triton's HTTP config endpoint renders it."""
    obj = json_format.MessageToDict(
        config,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return _triton_json(ModelConfig.DESCRIPTOR, obj)
