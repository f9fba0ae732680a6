"""config.pbtxt: parse, complete, normalise and validate, as Triton does.

The configuration *is* the protobuf ``ModelConfig`` message of our own
``model_config.proto`` (Triton's names and numbers), parsed with protobuf's
text_format. Errors name the file, the line and the problem: a parse error
carries protobuf's line/column, a validation error is located by walking the
file's tokens to the field it concerns.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor

from naiad.backends import registry
from naiad.core.errors import InvalidArgument, NaiadError
from naiad.protocol import model_config_pb2 as mc

ModelConfig = mc.ModelConfig

CONFIG_FILENAME = "config.pbtxt"
WILDCARD_DIM = -1


class ConfigError(InvalidArgument):
    """A problem in a model's configuration, with where it was found."""

    def __init__(self, problem: str, path: str | None = None, line: int | None = None):
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        super().__init__(f"{where}{problem}")
        self.problem = problem
        self.path = path
        self.line = line


# ---------------------------------------------------------------------------
# locating fields in the text
# ---------------------------------------------------------------------------


def _field_lines(text: str) -> dict[tuple, int]:
    """Map field paths like ('input', 0, 'dims') to the 1-based line they start on.

    A small walk over protobuf's own text tokenizer, following the message
    descriptors, so that validation errors can point at a line.
    """
    lines: dict[tuple, int] = {}
    try:
        tok = text_format.Tokenizer(text.splitlines())
    except Exception:  # pragma: no cover - the text parsed already
        return lines

    def walk(desc, prefix: tuple, end: str | None) -> None:
        counts: dict[str, int] = {}
        while not tok.AtEnd():
            if end is not None and tok.TryConsume(end):
                return
            line = tok._line + 1  # noqa: SLF001 - Tokenizer exposes no public line accessor
            try:
                name = tok.ConsumeIdentifierOrNumber()
            except text_format.ParseError:
                tok.NextToken()
                continue
            field = desc.fields_by_name.get(name) if desc is not None else None
            repeated = field is not None and field.label == FieldDescriptor.LABEL_REPEATED
            is_msg = field is not None and field.type == FieldDescriptor.TYPE_MESSAGE
            idx = counts.get(name, 0)
            path = prefix + ((name, idx) if repeated else (name,))
            tok.TryConsume(":")
            if tok.TryConsume("["):
                first = True
                while not tok.TryConsume("]"):
                    if not first:
                        tok.TryConsume(",")
                        if tok.TryConsume("]"):
                            break
                    first = False
                    item_line = tok._line + 1  # noqa: SLF001
                    ipath = prefix + (name, counts.get(name, 0))
                    lines.setdefault(ipath, item_line)
                    counts[name] = counts.get(name, 0) + 1
                    if tok.TryConsume("{"):
                        walk(field.message_type if is_msg else None, ipath, "}")
                    elif tok.TryConsume("<"):
                        walk(field.message_type if is_msg else None, ipath, ">")
                    else:
                        tok.NextToken()
                lines.setdefault(prefix + (name,), line)
                continue
            lines.setdefault(path, line)
            lines.setdefault(prefix + (name,), line)
            counts[name] = idx + 1
            if tok.TryConsume("{"):
                walk(field.message_type if is_msg else None, path, "}")
            elif tok.TryConsume("<"):
                walk(field.message_type if is_msg else None, path, ">")
            else:
                tok.NextToken()

    try:
        walk(ModelConfig.DESCRIPTOR, (), None)
    except Exception:
        pass
    return lines


class _Locator:
    """Turns a field path into ``file:line`` for error messages."""

    def __init__(self, path: str | None, text: str | None):
        self.path = path
        self._text = text
        self._lines: dict[tuple, int] | None = None

    def error(self, problem: str, *field_path: Any) -> ConfigError:
        line = None
        if self._text is not None and field_path:
            if self._lines is None:
                self._lines = _field_lines(self._text)
            fp = tuple(field_path)
            while fp and line is None:
                line = self._lines.get(fp)
                fp = fp[:-1]
        return ConfigError(problem, self.path, line)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def find_config_file(model_dir: str, config_name: str = "") -> str:
    """The config file Triton would read: configs/<name>.pbtxt if present."""
    if config_name:
        custom = os.path.join(model_dir, "configs", f"{config_name}.pbtxt")
        if os.path.isfile(custom):
            return custom
    return os.path.join(model_dir, CONFIG_FILENAME)


def parse_config_text(text: str, path: str = CONFIG_FILENAME) -> ModelConfig:
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        line = getattr(exc, "GetLine", lambda: None)()
        col = getattr(exc, "GetColumn", lambda: None)()
        msg = str(exc)
        # protobuf prefixes "line:col : "; keep only the problem
        if line is not None and msg.startswith(f"{line}:"):
            msg = msg.split(" : ", 1)[-1]
        where = f", column {col}" if col else ""
        raise ConfigError(f"failed to parse model configuration{where}: {msg}", path, line) from None
    return config


def parse_config_json(text: str | bytes) -> ModelConfig:
    """A config given as JSON (the repository load API's ``config`` parameter)."""
    config = ModelConfig()
    try:
        json_format.Parse(text, config, ignore_unknown_fields=False)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise ConfigError(f"failed to parse model configuration JSON: {exc}") from None
    return config


def read_config(model_dir: str, config_name: str = "") -> tuple[ModelConfig, str, str | None]:
    """Read a model's config file: (config, path, text). Missing file: empty config, text None."""
    path = find_config_file(model_dir, config_name)
    if not os.path.isfile(path):
        return ModelConfig(), path, None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"unable to read model configuration: {exc}", path) from None
    return parse_config_text(text, path), path, text


# ---------------------------------------------------------------------------
# versions
# ---------------------------------------------------------------------------


def available_versions(model_dir: str) -> list[int]:
    """Numeric sub-folders of a model folder (others are ignored, as in Triton)."""
    versions = []
    try:
        entries = os.listdir(model_dir)
    except OSError:
        return versions
    for entry in entries:
        if entry.isdigit() and os.path.isdir(os.path.join(model_dir, entry)):
            try:
                versions.append(int(entry))
            except ValueError:
                continue
    return sorted(versions)


def select_versions(config: ModelConfig, available: Iterable[int]) -> list[int]:
    """Apply the version policy to the versions present on disk."""
    available = sorted(set(available))
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return available
    if which == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in available if v in wanted]
    n = policy.latest.num_versions if which == "latest" else 1
    return available[-n:] if n > 0 else []


# ---------------------------------------------------------------------------
# completion and normalisation
# ---------------------------------------------------------------------------


def resolve_backend(config: ModelConfig, model_dir: str, versions: list[int]) -> None:
    """Fill ``backend`` (and ``platform`` where Triton reports one) in place."""
    if config.platform == "ensemble":
        return
    if not config.backend and config.platform:
        backend = registry.PLATFORM_TO_BACKEND.get(config.platform)
        if backend:
            config.backend = backend
    if not config.backend:
        # Detect from the files of the newest version, as Triton's auto-complete does.
        for v in sorted(versions, reverse=True):
            vdir = os.path.join(model_dir, str(v))
            candidates = [config.default_model_filename] if config.default_model_filename else []
            candidates += list(registry.FILE_TO_BACKEND)
            for fname in candidates:
                if fname and os.path.exists(os.path.join(vdir, fname)):
                    backend = registry.FILE_TO_BACKEND.get(fname)
                    if backend is None:
                        # default_model_filename given: infer from its suffix
                        ext = os.path.splitext(fname)[1]
                        backend = {".onnx": "onnxruntime", ".py": "python", ".pt": "pytorch",
                                   ".xml": "openvino"}.get(ext)
                    if backend:
                        config.backend = backend
                        break
            if config.backend:
                break
    if config.backend and not config.platform:
        platform = registry.BACKEND_TO_PLATFORM.get(config.backend)
        if platform and config.backend == "onnxruntime":
            config.platform = platform


def normalize(config: ModelConfig, gpu_count: int = 0) -> None:
    """Fill the defaults Triton fills, so the config endpoint shows what runs."""
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    elif config.version_policy.WhichOneof("policy_choice") == "latest":
        if config.version_policy.latest.num_versions == 0:
            config.version_policy.latest.num_versions = 1
    if not config.default_model_filename and config.backend:
        fname = registry.DEFAULT_MODEL_FILENAMES.get(config.backend)
        if fname:
            config.default_model_filename = fname
    if config.platform != "ensemble":
        opt = config.optimization
        if not opt.HasField("input_pinned_memory"):
            opt.input_pinned_memory.enable = True
        if not opt.HasField("output_pinned_memory"):
            opt.output_pinned_memory.enable = True
        if len(config.instance_group) == 0:
            group = config.instance_group.add()
            group.kind = mc.ModelInstanceGroup.KIND_GPU if gpu_count else mc.ModelInstanceGroup.KIND_CPU
        for i, group in enumerate(config.instance_group):
            if not group.name:
                group.name = f"{config.name}_{i}"
            if group.count < 1:
                group.count = 1
            if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
                group.kind = (
                    mc.ModelInstanceGroup.KIND_GPU if gpu_count else mc.ModelInstanceGroup.KIND_CPU
                )
            if group.kind == mc.ModelInstanceGroup.KIND_GPU and gpu_count and not group.gpus:
                group.gpus.extend(range(gpu_count))
    if config.HasField("dynamic_batching"):
        db = config.dynamic_batching
        if db.priority_levels and not db.default_priority_level:
            # Triton: the default priority level defaults to the lowest priority
            db.default_priority_level = db.priority_levels


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def _element_count(dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        if d == WILDCARD_DIM:
            return -1
        n *= d
    return n


def _validate_io(io, kind: str, index: int, max_batch_size: int, loc: _Locator) -> None:
    field = "input" if kind == "input" else "output"
    prefix = f"model {kind} '{io.name}' " if io.name else f"model {kind} "
    if not io.name:
        raise loc.error(f"model {kind} must specify 'name'", field, index)
    if io.data_type == mc.TYPE_INVALID:
        raise loc.error(prefix + "must specify 'data_type'", field, index, "data_type")
    if len(io.dims) == 0 and not (io.HasField("reshape") and max_batch_size > 0):
        raise loc.error(prefix + "must specify 'dims'", field, index)
    if io.HasField("reshape") and len(io.reshape.shape) == 0 and max_batch_size == 0:
        raise loc.error(prefix + "cannot have empty reshape for non-batching model",
                        field, index, "reshape")
    for d in io.dims:
        if d < 1 and d != WILDCARD_DIM:
            raise loc.error(
                prefix + "dimension must be integer >= 1, or -1 to indicate a variable-size "
                "dimension", field, index, "dims")
    if io.HasField("reshape"):
        for d in io.reshape.shape:
            if d < 1 and d != WILDCARD_DIM:
                raise loc.error(
                    prefix + "reshape dimensions must be integer >= 1, or -1 to indicate a "
                    "variable-size dimension", field, index, "reshape")
        dims_n = _element_count(io.dims)
        reshape_n = _element_count(io.reshape.shape)
        # (an empty reshape has one element, so [1] -> [] passes)
        if dims_n != reshape_n:
            raise loc.error(prefix + "has different size for dims and reshape",
                            field, index, "reshape")
        if dims_n == -1:
            def trunks(shape):
                out, cur = [], 1
                for d in shape:
                    if d == WILDCARD_DIM:
                        out.append(cur)
                        cur = 1
                    else:
                        cur *= d
                out.append(cur)
                return out

            a, b = trunks(io.dims), trunks(io.reshape.shape)
            if len(a) != len(b):
                raise loc.error(
                    prefix + "has different number of variable-size dimensions for dims and "
                    "reshape", field, index, "reshape")
            if a != b:
                raise loc.error(prefix + "has different size for dims and reshape",
                                field, index, "reshape")
    if kind == "input" and io.format in (mc.ModelInput.FORMAT_NHWC, mc.ModelInput.FORMAT_NCHW):
        if len(io.dims) != 3:
            raise loc.error(prefix + "NHWC/NCHW require 3 dims", field, index, "format")


def validate(config: ModelConfig, expected_name: str, path: str | None = None,
             text: str | None = None, require_io: bool = True) -> None:
    """Check a completed config; raise ConfigError naming file, line and problem."""
    loc = _Locator(path, text)
    if not config.name:
        raise loc.error("model configuration must specify 'name'")
    if config.name != expected_name:
        raise loc.error(
            f"unexpected 'name' in model configuration: the model folder is '{expected_name}' "
            f"but the configuration names '{config.name}'", "name")
    if config.max_batch_size < 0:
        raise loc.error("'max_batch_size' must be non-negative value", "max_batch_size")
    is_ensemble = config.platform == "ensemble"
    if not is_ensemble and not config.backend:
        if config.platform:
            raise loc.error(f"unexpected platform type '{config.platform}' for {config.name}",
                            "platform")
        raise loc.error(
            f"unable to determine the backend for model '{config.name}': set 'backend' (or "
            f"'platform') in the configuration", "backend")
    if is_ensemble and config.backend:
        raise loc.error("ensemble models must not set 'backend'", "backend")

    seen: set[str] = set()
    for i, io in enumerate(config.input):
        _validate_io(io, "input", i, config.max_batch_size, loc)
        if io.name in seen:
            raise loc.error(f"duplicate input name '{io.name}' in model configuration",
                            "input", i)
        seen.add(io.name)
    seen = set()
    for i, io in enumerate(config.output):
        _validate_io(io, "output", i, config.max_batch_size, loc)
        if io.name in seen:
            raise loc.error(f"duplicate output name '{io.name}' in model configuration",
                            "output", i)
        seen.add(io.name)
    if require_io and not is_ensemble:
        if config.backend not in ("python",) and len(config.input) == 0:
            raise loc.error(f"model configuration for '{config.name}' must specify at least one "
                            "input", "input")
        if len(config.output) == 0:
            raise loc.error(f"model configuration for '{config.name}' must specify at least one "
                            "output", "output")

    policy = config.version_policy
    if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 1:
        raise loc.error("version policy 'latest' must specify num_versions >= 1",
                        "version_policy")
    if policy.WhichOneof("policy_choice") == "specific":
        for v in policy.specific.versions:
            if v < 0:
                raise loc.error("version policy 'specific' versions must be >= 0",
                                "version_policy")

    if config.HasField("dynamic_batching"):
        db = config.dynamic_batching
        if config.max_batch_size == 0:
            raise loc.error(
                "dynamic batching requires 'max_batch_size' > 0 (the model must support "
                "batching)", "dynamic_batching")
        for size in db.preferred_batch_size:
            if size < 1:
                raise loc.error("dynamic batching preferred batch sizes must be positive",
                                "dynamic_batching")
            if size > config.max_batch_size:
                raise loc.error(
                    f"dynamic batching preferred size must be <= max batch size for "
                    f"{config.name}", "dynamic_batching")
        if db.priority_levels and db.default_priority_level > db.priority_levels:
            raise loc.error("default priority level must be in range [1, priority_levels]",
                            "dynamic_batching")
        for level in db.priority_queue_policy:
            if not db.priority_levels or level < 1 or level > db.priority_levels:
                raise loc.error(
                    f"priority queue policy must have priority level in range "
                    f"[1, {db.priority_levels}]", "dynamic_batching")

    for i, group in enumerate(config.instance_group):
        if group.count < 0:
            raise loc.error(f"instance group '{group.name}' must specify a positive 'count'",
                            "instance_group", i)


# ---------------------------------------------------------------------------
# JSON rendering (the config endpoint)
# ---------------------------------------------------------------------------

_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _fix_int64(desc, obj: dict) -> None:
    """json_format writes 64-bit integers as strings; Triton writes numbers."""
    for key, value in obj.items():
        field = desc.fields_by_name.get(key)
        if field is None:
            continue
        if field.type in _INT64_TYPES:
            if isinstance(value, list):
                obj[key] = [int(v) for v in value]
            else:
                obj[key] = int(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            mdesc = field.message_type
            if mdesc.GetOptions().map_entry:
                vfield = mdesc.fields_by_name["value"]
                kfield = mdesc.fields_by_name["key"]
                if vfield.type == FieldDescriptor.TYPE_MESSAGE:
                    for v in value.values():
                        _fix_int64(vfield.message_type, v)
                elif vfield.type in _INT64_TYPES:
                    for k in list(value):
                        value[k] = int(value[k])
                del kfield
            elif isinstance(value, list):
                for v in value:
                    _fix_int64(mdesc, v)
            elif isinstance(value, dict):
                _fix_int64(mdesc, value)


def config_to_dict(config: ModelConfig) -> dict:
    """The config as Triton's HTTP config endpoint renders it."""
    obj = json_format.MessageToDict(
        config,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    _fix_int64(ModelConfig.DESCRIPTOR, obj)
    return obj


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, NaiadError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
