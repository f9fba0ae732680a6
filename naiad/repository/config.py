"""config.pbtxt: parse, complete, normalise and validate, as Triton does.

The configuration *is* the protobuf ``ModelConfig`` message of our own
``model_config.proto`` (Triton's names and numbers), parsed with protobuf's
text_format. Errors name the file, the line and the problem: a parse error
carries protobuf's line/column, a validation error is located by walking the
file's tokens to the field it concerns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor

from naiad.backends import registry
from naiad.core.errors import InvalidArgument, NaiadError
from naiad.protocol import model_config_pb2 as mc

log = logging.getLogger("naiad.repository")

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


def _is_repeated(field) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5.28; ``label`` is deprecated there
    if flag is not None:
        return flag() if callable(flag) else bool(flag)
    return field.label == FieldDescriptor.LABEL_REPEATED


def _field_lines(text: str) -> dict[tuple, int]:
    """Map field paths like ('input', 0, 'dims') to the 1-based line they start on.

    A small walk over protobuf's own text tokenizer, following the message
    descriptors, so that validation errors can point at a line. Only run when
    an error needs locating; best effort, never raises, always ends.
    """
    lines: dict[tuple, int] = {}
    try:
        tok = text_format.Tokenizer(text.splitlines())
    except Exception:  # pragma: no cover - the text parsed already
        return lines

    def line_now() -> int:
        return tok._line + 1  # noqa: SLF001 - Tokenizer exposes no public line accessor

    def value(field, path: tuple) -> None:
        """One value: a message in {} or <>, or a scalar token."""
        msg = field.message_type if field is not None and \
            field.type == FieldDescriptor.TYPE_MESSAGE else None
        if tok.TryConsume("{"):
            walk(msg, path, "}")
        elif tok.TryConsume("<"):
            walk(msg, path, ">")
        elif not tok.AtEnd():
            tok.NextToken()

    def walk(desc, prefix: tuple, end: str | None) -> None:
        counts: dict[str, int] = {}
        while not tok.AtEnd():
            if end is not None and tok.TryConsume(end):
                return
            line = line_now()
            try:
                name = tok.ConsumeIdentifierOrNumber()
            except text_format.ParseError:
                tok.NextToken()
                continue
            field = desc.fields_by_name.get(name) if desc is not None else None
            repeated = field is not None and _is_repeated(field)
            lines.setdefault(prefix + (name,), line)
            tok.TryConsume(":")
            if tok.TryConsume("["):
                while not tok.AtEnd() and not tok.TryConsume("]"):
                    if tok.TryConsume(","):
                        continue
                    ipath = prefix + (name, counts.get(name, 0))
                    lines.setdefault(ipath, line_now())
                    counts[name] = counts.get(name, 0) + 1
                    value(field, ipath)
                continue
            path = prefix + ((name, counts.get(name, 0)) if repeated else (name,))
            lines.setdefault(path, line)
            counts[name] = counts.get(name, 0) + 1
            value(field, path)

    try:
        walk(ModelConfig.DESCRIPTOR, (), None)
    except Exception:  # pragma: no cover - best effort
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
        line = exc.GetLine() if hasattr(exc, "GetLine") else None
        col = exc.GetColumn() if hasattr(exc, "GetColumn") else None
        msg = str(exc)
        # protobuf writes "<line>:<col> : <problem>"; the location goes up front instead
        if line is not None and msg.startswith(f"{line}:"):
            msg = msg.split(" : ", 1)[-1]
        if line is not None:
            # protobuf may quote the whole offending line before the problem; drop it
            src = text.splitlines()[line - 1] if 0 < line <= len(text.splitlines()) else None
            if src is not None and msg.startswith(f"'{src}': "):
                msg = msg[len(src) + 4:]
        where = f"column {col}: " if col else ""
        raise ConfigError(f"failed to parse model configuration: {where}{msg}", path, line) from None
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
    """Numeric sub-folders of a model folder; others are ignored with a warning, as in Triton."""
    versions = []
    try:
        entries = os.listdir(model_dir)
    except OSError:
        return versions
    for entry in entries:
        if not os.path.isdir(os.path.join(model_dir, entry)):
            continue
        if entry.isascii() and entry.isdigit():
            versions.append(int(entry))
        elif not entry.startswith(".") and entry != "configs":
            log.warning("ignore version directory '%s' of model '%s' which fails to convert "
                        "to integral number", entry, os.path.basename(model_dir.rstrip(os.sep)))
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


def load_model_config(
    model_dir: str, name: str, *, config_name: str = "", auto_complete: bool = True,
    backend_config: Callable[[str], dict[str, str]] | None = None,
    override: ModelConfig | None = None,
) -> tuple[ModelConfig, str, str | None]:
    """A model's configuration as loading it makes it: (config, path, text).

    Reads the config file (or takes ``override``, a load request's config),
    resolves the backend, runs its auto-complete, fills Triton's defaults and
    validates everything but the inputs and outputs (``validate_io``: Triton
    checks those per version, at load). Errors are ``ConfigError``/``NaiadError``
    with the messages a load reports. The repository manager and ``naiad
    validate`` both call this, so they say the same thing.
    """
    text = None
    if override is not None:
        config = ModelConfig()
        config.CopyFrom(override)
        path = "<load request config>"
    else:
        config, path, text = read_config(model_dir, config_name)
        if text is None:
            if not auto_complete:
                raise ConfigError(
                    "model configuration file not found (auto-complete is disabled by "
                    "--strict-model-config/--disable-auto-complete-config)", path)
            path = model_dir  # later errors name the folder, not a file that is not there
    if not config.name:
        config.name = name
    if config.name != name:
        validate(config, name, path, text)  # raises the name mismatch
    available = available_versions(model_dir)
    resolve_backend(config, model_dir, available)
    if auto_complete and config.backend:
        backend = registry.get_backend(config.backend)
        versions = select_versions(config, available) or available
        vdir = os.path.join(model_dir, str(versions[-1])) if versions else None
        settings = backend_config(config.backend) if backend_config is not None else {}
        try:
            backend.auto_complete_config(config, model_dir, vdir, settings)
        except NaiadError:
            raise
        except Exception as exc:
            raise ConfigError(f"auto-complete failed: {exc}", path) from None
    normalize(config)
    validate(config, name, path, text, io=False)
    return config, path, text


def versions_to_load(config: ModelConfig, model_dir: str, name: str) -> list[int]:
    """The versions the policy selects among the folders present; none is an error."""
    versions = select_versions(config, available_versions(model_dir))
    if not versions:
        raise ConfigError(
            f"at least one version must be available under the version policy of model "
            f"'{name}'", model_dir)
    return versions


SEQUENCE_IDLE_DEFAULT_MICROSECONDS = 1_000_000


def normalize(config: ModelConfig, gpu_count: int = 0) -> None:
    """Fill the defaults Triton fills, so the config endpoint shows what runs.

    Triton's NormalizeModelConfig and NormalizeInstanceGroup: a default
    version policy, preferred batch sizes, the sequence idle time, pinned
    memory, and one instance group named after the model when none is given
    (unnamed groups are ``<model>_<index>``).
    """
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    elif config.version_policy.WhichOneof("policy_choice") == "latest":
        if config.version_policy.latest.num_versions == 0:
            config.version_policy.latest.num_versions = 1
    if not config.default_model_filename and config.backend:
        fname = registry.DEFAULT_MODEL_FILENAMES.get(config.backend)
        if fname:
            config.default_model_filename = fname
    if config.HasField("dynamic_batching"):
        db = config.dynamic_batching
        if not db.preferred_batch_size and config.max_batch_size > 0:
            db.preferred_batch_size.append(config.max_batch_size)
    if config.HasField("sequence_batching"):
        sb = config.sequence_batching
        if sb.max_sequence_idle_microseconds == 0:
            sb.max_sequence_idle_microseconds = SEQUENCE_IDLE_DEFAULT_MICROSECONDS
        if sb.HasField("oldest") and not sb.oldest.preferred_batch_size \
                and config.max_batch_size > 0:
            sb.oldest.preferred_batch_size.append(config.max_batch_size)
    if config.platform != "ensemble" and not config.HasField("ensemble_scheduling"):
        opt = config.optimization
        if not opt.HasField("input_pinned_memory"):
            opt.input_pinned_memory.enable = True
        if not opt.HasField("output_pinned_memory"):
            opt.output_pinned_memory.enable = True
        if len(config.instance_group) == 0:
            group = config.instance_group.add()
            group.name = config.name  # Triton names the implicit group after the model
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
             text: str | None = None, require_io: bool = True, io: bool = True) -> None:
    """Check a completed config; raise ConfigError naming file, line and problem.

    ``io=False`` leaves out the checks of inputs and outputs (``validate_io``):
    Triton makes those when a version loads, after the backend completed the
    config, and reports them against the version.
    """
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
        # (Triton accepts dynamic_batching on a model with max_batch_size 0: it
        # never forms a batch larger than one request)
        db = config.dynamic_batching
        for size in db.preferred_batch_size:
            if size < 1:
                raise loc.error(
                    f"dynamic batching preferred size must be positive for {config.name}",
                    "dynamic_batching", "preferred_batch_size")
            if size > config.max_batch_size:
                raise loc.error(
                    f"dynamic batching preferred size must be <= max batch size for "
                    f"{config.name}", "dynamic_batching", "preferred_batch_size")
        levels = db.priority_levels
        if levels:
            if not 1 <= db.default_priority_level <= levels:
                raise loc.error(
                    f"default priority level must be in range [1, {levels}] for {config.name}",
                    "dynamic_batching", "default_priority_level" if db.default_priority_level
                    else "priority_levels")
            for level in db.priority_queue_policy:
                if not 1 <= level <= levels:
                    raise loc.error(
                        f"priority queue policy must have priority level in range "
                        f"[1, {levels}] for {config.name}",
                        "dynamic_batching", "priority_queue_policy")
        if db.preserve_ordering:
            if levels > 1:
                raise loc.error(
                    "Only one priority level is allowed when 'preserve_ordering' is true for "
                    f"{config.name}", "dynamic_batching", "preserve_ordering")
            delay = mc.ModelQueuePolicy.DELAY
            policies = [db.default_queue_policy, *db.priority_queue_policy.values()]
            if any(p.default_timeout_microseconds and p.timeout_action == delay
                   for p in policies):
                raise loc.error(
                    "Queue policy can not have DELAY as timeout action when "
                    f"'preserve_ordering' is true for {config.name}",
                    "dynamic_batching", "preserve_ordering")

    for i, group in enumerate(config.instance_group):
        if group.count < 0:
            raise loc.error(f"instance group '{group.name}' must specify a positive 'count'",
                            "instance_group", i, "count")

    if io:
        _validate_io_all(config, loc, require_io)


def validate_io(config: ModelConfig, path: str | None = None, text: str | None = None,
                require_io: bool = True) -> None:
    """The input/output checks of ``validate`` alone (Triton's load-time checks)."""
    _validate_io_all(config, _Locator(path, text), require_io)


def _validate_io_all(config: ModelConfig, loc: _Locator, require_io: bool) -> None:
    for field in ("input", "output"):
        seen: set[str] = set()
        for i, io in enumerate(getattr(config, field)):
            _validate_io(io, field, i, config.max_batch_size, loc)
            if io.name in seen:
                # (Triton loads such a model, but no request can ever satisfy it)
                raise loc.error(f"duplicate {field} name '{io.name}' in model configuration",
                                field, i, "name")
            seen.add(io.name)
    # Python models may have no inputs or outputs at all (Triton loads them);
    # the framework backends need them to bind the model's tensors.
    if require_io and config.platform != "ensemble" and config.backend != "python":
        if len(config.input) == 0:
            raise loc.error(f"model configuration for '{config.name}' must specify at least one "
                            "input", "input")
        if len(config.output) == 0:
            raise loc.error(f"model configuration for '{config.name}' must specify at least one "
                            "output", "output")


# ---------------------------------------------------------------------------
# JSON rendering (the config endpoint)
# ---------------------------------------------------------------------------
