"""Turn a model file (or a python callable) into a model repository entry.

1. detect the format (``formats.py``) and copy the file(s) into
   ``<repo>/<name>/<version>/`` under the name the backend expects;
2. draft a config from the flags (backend, ``--input``/``--output``,
   ``--max-batch-size``, format parameters) and complete it with the
   backend's auto-complete through the repository layer
   (``naiad.repository.config.load_model_config``), exactly as a server
   loading the folder would;
3. write a concise ``config.pbtxt`` (name, backend, max_batch_size, tensors,
   dynamic batching for batchable models, instance_group, parameters,
   labels), check it reads with auto-complete off, and load the model with
   its backend once (``naiad validate --initialize``'s check);
4. with ``--task``, add the task's pre/post-processing models and ensemble
   (``naiad.tools.tasks``) and check the whole pipeline with ``naiad
   validate``'s checks.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil

from naiad.core.errors import NaiadError, Unsupported
from naiad.protocol import model_config_pb2 as mc
from naiad.repository import config as cfg
from naiad.tools.importer import formats

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


class ImportError_(Exception):
    """A model that cannot be imported: the message says why."""


@dataclasses.dataclass
class TensorFlag:
    name: str
    data_type: str  # config enum name, e.g. TYPE_FP32
    dims: list[int]


def parse_tensor(text: str) -> TensorFlag:
    """'NAME:TYPE:D1,D2' (TYPE as FP32, TYPE_FP32, BYTES or STRING)."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise ImportError_(f"'{text}': expected NAME:TYPE:DIMS, e.g. INPUT__0:FP32:3,224,224")
    name, dtype, dims = parts
    dtype = dtype.upper()
    if dtype in ("BYTES", "STRING"):
        dtype = "TYPE_STRING"
    elif not dtype.startswith("TYPE_"):
        dtype = "TYPE_" + dtype
    if dtype not in mc.DataType.keys() or dtype == "TYPE_INVALID":
        raise ImportError_(f"'{text}': unknown data type (FP32, INT64, BYTES, ...)")
    try:
        shape = [int(d) for d in dims.split(",")] if dims else []
    except ValueError:
        raise ImportError_(f"'{text}': dimensions are integers, -1 for a variable size")
    if not shape or any(d < 1 and d != -1 for d in shape):
        raise ImportError_(f"'{text}': give at least one dimension, each >= 1 or -1")
    return TensorFlag(name, dtype, shape)


@dataclasses.dataclass
class ImportOptions:
    source: str
    repository: str
    name: str = ""
    version: int = 1
    format: str = ""
    inputs: list[TensorFlag] = dataclasses.field(default_factory=list)
    outputs: list[TensorFlag] = dataclasses.field(default_factory=list)
    max_batch_size: int | None = None
    dynamic_batching: bool = True
    instances: int = 1
    kind: str = "cpu"
    labels: str = ""
    labels_output: str = ""
    force: bool = False
    backend_config: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    task: str = ""
    task_options: dict[str, str] = dataclasses.field(default_factory=dict)
    task_models: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ImportResult:
    models: list[str]  # model folders written, the model users call first
    warnings: list[str]
    config: mc.ModelConfig  # the imported network's config as written


def default_name(source: str, fmt: formats.Format) -> str:
    if fmt.name == "python" and formats.is_callable_spec(source):
        base = source.rpartition(":")[2]
    else:
        base = os.path.splitext(os.path.basename(source.rstrip("/")))[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", base) or "model"


def _backend_settings(opts: ImportOptions):
    def merged(backend: str) -> dict[str, str]:
        out = dict(opts.backend_config.get("", {}))
        out.update(opts.backend_config.get(backend, {}))
        return out

    return merged


def _copy_files(opts: ImportOptions, fmt: formats.Format, vdir: str,
                draft: mc.ModelConfig) -> None:
    if fmt.name == "python":
        shutil.copyfile(os.path.join(TEMPLATES, "python_callable.py"),
                        os.path.join(vdir, "model.py"))
        head, _, function = opts.source.rpartition(":")
        target = head
        if head.endswith(".py") or os.sep in head or os.path.isfile(head):
            if not os.path.isfile(head):
                raise ImportError_(f"python file '{head}' not found")
            module = os.path.splitext(os.path.basename(head))[0]
            if module == "model":
                raise ImportError_("the function's file must not be called model.py "
                                   "(that name is the python model itself)")
            shutil.copyfile(head, os.path.join(vdir, module + ".py"))
            target = module
        draft.parameters["callable"].string_value = f"{target}:{function}"
        return
    shutil.copyfile(opts.source, os.path.join(vdir, fmt.filename))
    for ext, name in fmt.companions:
        companion = os.path.splitext(opts.source)[0] + ext
        if not os.path.isfile(companion):
            raise ImportError_(f"'{companion}' (the {fmt.name} model's {ext} file) not found "
                               f"beside '{opts.source}'")
        shutil.copyfile(companion, os.path.join(vdir, name))


def _draft(opts: ImportOptions, fmt: formats.Format, name: str) -> mc.ModelConfig:
    from naiad.backends import registry

    draft = mc.ModelConfig(name=name, backend=fmt.backend)
    # fil finds its file by model_type (the format's parameter); the others by default name
    if fmt.name != "python" and not fmt.parameters and \
            registry.DEFAULT_MODEL_FILENAMES.get(fmt.backend) != fmt.filename:
        draft.default_model_filename = fmt.filename  # e.g. pytorch's model.pt2
    for key, value in fmt.parameters:
        draft.parameters[key].string_value = value
    if opts.max_batch_size is not None:
        draft.max_batch_size = opts.max_batch_size
    for field, flags in ((draft.input, opts.inputs), (draft.output, opts.outputs)):
        for t in flags:
            io = field.add()
            io.name, io.data_type = t.name, mc.DataType.Value(t.data_type)
            io.dims.extend(t.dims)
    return draft


def _concise(done: mc.ModelConfig, fmt: formats.Format, opts: ImportOptions) -> mc.ModelConfig:
    """The config to write: what matters, not every default the server fills in."""
    from naiad.backends import registry

    out = mc.ModelConfig(name=done.name, backend=done.backend,
                         max_batch_size=done.max_batch_size)
    if done.default_model_filename and done.default_model_filename != \
            registry.DEFAULT_MODEL_FILENAMES.get(done.backend):
        out.default_model_filename = done.default_model_filename
    out.input.extend(done.input)
    out.output.extend(done.output)
    if done.max_batch_size > 0 and opts.dynamic_batching:
        out.dynamic_batching.SetInParent()
        if done.HasField("dynamic_batching"):
            db = mc.ModelDynamicBatching()
            db.CopyFrom(done.dynamic_batching)
            # normalize() fills preferred sizes with max_batch_size: leave them out
            if list(db.preferred_batch_size) == [done.max_batch_size]:
                del db.preferred_batch_size[:]
            out.dynamic_batching.CopyFrom(db)
    group = out.instance_group.add()
    group.count = max(1, opts.instances)
    group.kind = mc.ModelInstanceGroup.KIND_GPU if opts.kind == "gpu" else \
        mc.ModelInstanceGroup.KIND_CPU
    for key, value in done.parameters.items():
        out.parameters[key].CopyFrom(value)
    return out


def write_config(model_dir: str, config: mc.ModelConfig, comment: str = "") -> str:
    path = os.path.join(model_dir, cfg.CONFIG_FILENAME)
    head = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    from naiad.tools.pbtxt import config_text

    with open(path, "w", encoding="utf-8") as f:
        f.write(head + config_text(config))
    return path


def check_written(model_dir: str, name: str) -> mc.ModelConfig:
    """The written config loads as it is (auto-complete off): complete and valid."""
    try:
        config, path, text = cfg.load_model_config(model_dir, name, auto_complete=False)
        cfg.validate_io(config, path, text)
        cfg.versions_to_load(config, model_dir, name)
    except NaiadError as exc:
        raise ImportError_(f"the written configuration does not load: {exc.message}") from None
    return config


def check_loads(opts: ImportOptions, model_dir: str, name: str) -> None:
    """The model loads with its backend and makes an instance (``naiad validate
    --initialize``): a config that disagrees with the file (a wrong --input) fails here,
    in the backend's words, instead of when the server loads it."""
    from naiad.tools.validate import check_model

    report = check_model(name, opts.repository, model_dir, backend_config=opts.backend_config,
                         initialize=True)
    if report.errors:
        raise ImportError_(f"the written configuration does not load: {report.errors[0]}")


def import_model(opts: ImportOptions) -> ImportResult:
    try:
        fmt = formats.detect(opts.source, opts.format)
    except formats.FormatError as exc:
        raise ImportError_(str(exc)) from None
    warnings: list[str] = []
    base = opts.name or default_name(opts.source, fmt)
    name = f"{base}_model" if opts.task else base
    if opts.version < 1:
        raise ImportError_("--version must be >= 1")
    if opts.max_batch_size is not None and opts.max_batch_size < 0:
        raise ImportError_("--max-batch-size must be >= 0")
    task = None
    if opts.task:
        from naiad.tools import tasks

        task = tasks.get(opts.task)  # unknown task: fails before anything is written
    os.makedirs(opts.repository, exist_ok=True)
    model_dir = os.path.join(opts.repository, name)
    planned = [model_dir] + ([os.path.join(opts.repository, n)
                              for n in task.model_names(base)] if task else [])
    existing = [p for p in planned if os.path.exists(p)]
    if existing and not opts.force:
        raise ImportError_(f"'{existing[0]}' exists: choose another --name or use --force")
    for p in existing:
        shutil.rmtree(p)
    if task is not None and opts.max_batch_size is None and task.max_batch_size is not None:
        opts = dataclasses.replace(opts, max_batch_size=task.max_batch_size)
    if opts.max_batch_size is not None:
        # Triton's setting for what auto-complete gives a batchable model (every backend)
        settings = {k: dict(v) for k, v in opts.backend_config.items()}
        settings.setdefault("", {}).setdefault("default-max-batch-size",
                                               str(opts.max_batch_size))
        opts = dataclasses.replace(opts, backend_config=settings)
    vdir = os.path.join(model_dir, str(opts.version))
    os.makedirs(vdir)
    try:
        draft = _draft(opts, fmt, name)
        _copy_files(opts, fmt, vdir, draft)
        if not fmt.self_describing and not (opts.inputs and opts.outputs):
            raise ImportError_(f"{fmt.note}")
        backend_available = True
        try:
            done, _, _ = cfg.load_model_config(model_dir, name, auto_complete=True,
                                               backend_config=_backend_settings(opts),
                                               override=draft)
        except Unsupported as exc:
            backend_available = False
            if not (opts.inputs and opts.outputs):
                raise ImportError_(f"{exc.message}; without the backend, give --input and "
                                   "--output to write the config anyway") from None
            warnings.append(f"{exc.message}: the config was written from --input/--output "
                            "and not checked against the model file")
            done = mc.ModelConfig()
            done.CopyFrom(draft)
            cfg.normalize(done)
        except NaiadError as exc:
            raise ImportError_(exc.message) from None
        final = _concise(done, fmt, opts)
        if opts.labels:
            if not os.path.isfile(opts.labels):
                raise ImportError_(f"labels file '{opts.labels}' not found")
            shutil.copyfile(opts.labels, os.path.join(model_dir, "labels.txt"))
            target = opts.labels_output or (final.output[0].name if final.output else "")
            outs = [o for o in final.output if o.name == target]
            if not outs:
                raise ImportError_(f"--labels-output '{target}' is not an output of the model")
            outs[0].label_filename = "labels.txt"
        what = opts.source if fmt.name != "python" else f"the python callable {opts.source}"
        write_config(model_dir, final, f"Written by naiad import from {what} ({fmt.name}, "
                                       f"{fmt.backend} backend).")
        written = check_written(model_dir, name)
        if backend_available:
            check_loads(opts, model_dir, name)
        models = [name]
        if task is not None:
            from naiad.tools import tasks

            def import_network(source: str, net_name: str, mbs: int | None):
                try:
                    return import_model(ImportOptions(
                        source=source, repository=opts.repository, name=net_name,
                        max_batch_size=mbs, force=True,
                        backend_config=opts.backend_config)).config
                except ImportError_ as exc:
                    raise tasks.TaskError(f"{os.path.basename(source)}: {exc}") from None

            ctx = tasks.TaskContext(repository=opts.repository, name=base, model_name=name,
                                    model_config=written, options=dict(opts.task_options),
                                    models=dict(opts.task_models),
                                    labels_file=os.path.join(model_dir, "labels.txt")
                                    if opts.labels else "", import_network=import_network,
                                    source_file=opts.source)
            try:
                added = task.build(ctx)
            except tasks.TaskError as exc:
                raise ImportError_(f"--task {opts.task}: {exc}") from None
            models = added + models
            warnings += ctx.warnings
        return ImportResult(models, warnings, written)
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)
        if task is not None:
            for n in task.model_names(base):
                shutil.rmtree(os.path.join(opts.repository, n), ignore_errors=True)
        raise
