"""``naiad validate REPO...``: check model repositories without serving them.

Every model folder goes through what loading it does first: the repository
layer's ``load_model_config`` (parse with file:line errors, backend
resolution, the backend's auto-complete, Triton's defaults, validation), the
version policy against the version folders present, the per-version
input/output checks, the model file each backend needs. Python models are
imported (syntax and import errors, a missing ``TritonPythonModel``) but not
initialized unless ``--initialize``, which also loads every other backend's
model and creates one instance. Ensembles are checked as a load checks them
(``naiad.scheduling.ensemble``): unknown step models, unmapped or unused
tensors, outputs never written, cycles between ensembles, datatype and shape
mismatches between steps.

Prints a table (and every problem in full) or ``--format json``; exits 0 when
every model would load, 1 otherwise (2 for a bad command line).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import sys
import traceback

from google.protobuf import text_format

from naiad.backends import registry
from naiad.core.errors import NaiadError
from naiad.protocol import model_config_pb2 as mc
from naiad.protocol.config_json import config_to_dict
from naiad.repository import config as cfg
from naiad.repository import storage
from naiad.repository.dependencies import dependencies_of


@dataclasses.dataclass
class ModelReport:
    name: str
    repository: str
    model_dir: str
    versions: list[int] = dataclasses.field(default_factory=list)
    backend: str = ""
    platform: str = ""
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    config: mc.ModelConfig | None = None

    @property
    def status(self) -> str:
        return "ERROR" if self.errors else ("WARNING" if self.warnings else "OK")

    def as_dict(self, with_config: bool) -> dict:
        d = {"model": self.name, "repository": self.repository, "status": self.status,
             "versions": self.versions, "backend": self.backend, "platform": self.platform,
             "errors": self.errors, "warnings": self.warnings}
        if with_config and self.config is not None:
            d["config"] = config_to_dict(self.config)
        return d


class _Capture(logging.Handler):
    """Warnings the repository layer logs while a model is read (ignored folders, ...)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _message(exc: BaseException) -> str:
    if isinstance(exc, NaiadError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def _python_import(path: str, label: str) -> str:
    """'' if the model file imports and defines TritonPythonModel, else the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        compile(source, path, "exec")
    except SyntaxError as exc:
        return f"{path}:{exc.lineno}: SyntaxError: {exc.msg}"
    except (OSError, UnicodeDecodeError) as exc:
        return f"unable to read python model file '{path}': {exc}"
    import naiad.backends.python.backend  # noqa: F401 - makes triton_python_backend_utils importable

    folder = os.path.dirname(os.path.abspath(path))
    spec = importlib.util.spec_from_file_location(f"_naiad_validate_{label}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - SystemExit at import is a problem too
        where = ""
        tb = traceback.extract_tb(exc.__traceback__)
        frames = [f for f in tb if os.path.abspath(f.filename) == os.path.abspath(path)]
        if frames:
            where = f"{path}:{frames[-1].lineno}: "
        return (f"{where}failed to import python model file '{path}': "
                f"{type(exc).__name__}: {exc}")
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    if getattr(module, "TritonPythonModel", None) is None:
        return f"python model file '{path}' does not define class TritonPythonModel"
    return ""


def _locate(message: str) -> str:
    """Put ``file:line:`` in front of a load's python import error when the line is known."""
    prefix = "failed to import python model file '"
    if not message.startswith(prefix):
        return message
    path = message[len(prefix):].split("'", 1)[0]
    problem = _python_import(path, "locate") if os.path.isfile(path) else ""
    if problem and problem.startswith(f"{path}:") and not message.startswith(path):
        line = problem[len(path) + 1:].split(":", 1)[0]
        if line.isdigit():
            return f"{path}:{line}: {message}"
    return message


def _initialize(report: ModelReport, version: int, backend_config: dict) -> str:
    """Load one version with its backend and create one instance (runs initialize)."""
    from naiad.backends.base import InstanceSpec, ModelLoadContext

    config = report.config
    vdir = os.path.join(report.model_dir, str(version))
    ctx = ModelLoadContext(name=report.name, version=version, model_dir=report.model_dir,
                           version_dir=vdir, config=config,
                           backend_config=backend_config.get(config.backend, {}),
                           repository=report.repository)
    try:
        backend = registry.get_backend(config.backend)
        model = backend.load(ctx)
        group = config.instance_group[0] if config.instance_group else None
        kind = mc.ModelInstanceGroup.Kind.Name(group.kind) if group else "KIND_CPU"
        spec = InstanceSpec(name=f"{group.name if group else report.name}_0", kind=kind,
                            device_id=0, group_index=0, index_in_group=0)
        instance = model.create_instance(spec)
        instance.finalize()
        model.finalize()
    except BaseException as exc:  # noqa: BLE001 - report, never crash
        return f"version {version}: {_message(exc)}"
    return ""


def check_model(name: str, repository: str, model_dir: str, *, config_name: str = "",
                auto_complete: bool = True, backend_config: dict | None = None,
                initialize: bool = False) -> ModelReport:
    report = ModelReport(name, repository, model_dir)
    settings = backend_config or {}

    def merged(backend: str) -> dict[str, str]:
        out = dict(settings.get("", {}))
        out.update(settings.get(backend, {}))
        return out

    capture = _Capture()
    repo_log = logging.getLogger("naiad.repository")
    repo_log.addHandler(capture)
    try:
        try:
            config, path, text = cfg.load_model_config(
                model_dir, name, config_name=config_name, auto_complete=auto_complete,
                backend_config=merged)
        except BaseException as exc:  # noqa: BLE001
            report.errors.append(_locate(_message(exc)))
            return report
        report.config = config
        report.backend, report.platform = config.backend, config.platform
        try:
            report.versions = cfg.versions_to_load(config, model_dir, name)
        except NaiadError as exc:
            report.errors.append(exc.message)
        try:  # Triton checks inputs and outputs when a version loads
            cfg.validate_io(config, path, text)
        except NaiadError as exc:
            report.errors.append(exc.message)
    finally:
        repo_log.removeHandler(capture)
    report.warnings += [m for m in capture.messages if "autofilled" not in m]
    policy = config.version_policy
    if policy.WhichOneof("policy_choice") == "specific":
        present = set(cfg.available_versions(model_dir))
        for v in policy.specific.versions:
            if v not in present:
                report.warnings.append(f"version {v} named by the version policy has no folder "
                                       f"in {model_dir}")
    if config.platform == "ensemble":
        return report
    # the model files each version needs, as the backend names them
    try:
        backend = registry.get_backend(config.backend)
    except NaiadError as exc:  # not installed: the load fails the same way
        report.errors.append(exc.message)
        return report
    for v in report.versions:
        vdir = os.path.join(model_dir, str(v))
        try:
            needed = backend.model_files(config, vdir)
        except NaiadError as exc:  # e.g. fil's unknown model_type
            report.errors.append(exc.message)
            break
        missing = [f for f in needed if not os.path.exists(f)]
        if missing:
            # the backend's own words for it (python's, else the framework backends')
            report.errors.append(f"python model file '{missing[0]}' not found"
                                 if config.backend == "python" else
                                 f"unable to find '{missing[0]}' for model '{name}'")
            continue
        if config.backend == "python" and needed:
            problem = _python_import(needed[0], f"{name}_{v}")
            if problem:
                report.errors.append(problem)
    if initialize and not report.errors:
        for v in report.versions:
            problem = _initialize(report, v, settings)
            if problem:
                report.errors.append(problem)
    return report


def _check_ensembles(reports: dict[str, ModelReport]) -> None:
    from naiad.scheduling import ensemble

    for name, r in reports.items():
        config = r.config
        if config is None or r.errors:
            continue
        deps = dependencies_of(config)
        missing = sorted(d for d in deps if d not in reports)
        if config.platform == "ensemble":
            try:
                ensemble.validate_config(config)
            except NaiadError as exc:
                r.errors.append(exc.message)
                continue
            if missing:
                r.errors.append(f"ensemble {name} contains models that are not available or "
                                f"ambiguous: {', '.join(missing)}")
                continue
        elif missing:
            r.errors.append(f"model '{name}' depends on {', '.join(missing)}, which the "
                            "repositories do not have")
            continue
        cycle = _cycle(name, reports)
        if cycle:
            r.errors.append(f"circular dependency between models: {' -> '.join(cycle)}")
            continue
        if config.platform != "ensemble":
            continue
        broken = [s.model_name for s in config.ensemble_scheduling.step
                  if reports[s.model_name].config is None]
        if broken:
            r.errors.append(f"ensemble '{name}' depends on '{broken[0]}' which has no loaded "
                            f"version. Model '{broken[0]}' loading failed with error: "
                            f"{reports[broken[0]].errors[0]}")
            continue
        step_configs = []
        for step in config.ensemble_scheduling.step:
            dep = reports[step.model_name]
            if step.model_version >= 0 and step.model_version not in dep.versions:
                r.errors.append(f"ensemble '{name}' depends on '{step.model_name}' whose "
                                f"required version {step.model_version} is not loaded")
                break
            step_configs.append(dep.config)
        else:
            try:
                ensemble.validate_against_models(config, step_configs)
            except NaiadError as exc:
                r.errors.append(exc.message)
    # a model whose dependency fails fails to load too
    for name, r in reports.items():
        if r.config is None or r.errors:
            continue
        for dep in sorted(dependencies_of(r.config)):
            d = reports.get(dep)
            if d is not None and d.errors:
                r.errors.append(f"model '{name}' depends on '{dep}', which failed to load: "
                                f"{d.errors[0]}")
                break


def _cycle(start: str, reports: dict[str, ModelReport]) -> list[str]:
    path: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> bool:
        if name in path:
            path.append(name)
            return True
        if name in seen:
            return False
        seen.add(name)
        path.append(name)
        r = reports.get(name)
        deps = dependencies_of(r.config) if r is not None and r.config is not None else set()
        for dep in sorted(deps):
            if visit(dep):
                return True
        path.pop()
        return False

    if visit(start):
        i = path.index(path[-1])
        cycle = path[i:]
        return cycle if start in cycle else []
    return []


def validate_repositories(repositories: list[str], *, config_name: str = "",
                          auto_complete: bool = True, backend_config: dict | None = None,
                          initialize: bool = False) -> tuple[list[ModelReport], list[str]]:
    """Check every model of the repositories; returns (reports, repository-level errors)."""
    reports: dict[str, ModelReport] = {}
    problems: list[str] = []
    for url in repositories:
        try:
            source = storage.open_repository(url)
            source.check()
            names = source.list_models()
        except BaseException as exc:  # noqa: BLE001
            problems.append(f"{url}: {_message(exc)}")
            continue
        for name in names:
            if name in reports:
                other = reports[name]
                other.errors.append(f"model '{name}' appears in more than one repository "
                                    f"({other.repository}, {url}): the server refuses "
                                    "ambiguous names")
                continue
            try:
                model_dir = source.materialize(name)
            except BaseException as exc:  # noqa: BLE001
                reports[name] = ModelReport(name, url, "", errors=[_message(exc)])
                continue
            reports[name] = check_model(name, url, model_dir, config_name=config_name,
                                        auto_complete=auto_complete,
                                        backend_config=backend_config, initialize=initialize)
    _check_ensembles(reports)
    return list(reports.values()), problems


def _table(reports: list[ModelReport]) -> str:
    from naiad.observability.logging import render_table

    rows = []
    for r in reports:
        first = (r.errors or r.warnings or [""])[0]
        if len(first) > 70:
            first = first[:67] + "..."
        rows.append((r.name, ",".join(str(v) for v in r.versions) or "-",
                     r.backend or r.platform or "-", r.status, first))
    return render_table(["Model", "Version", "Backend", "Status", "Message"], rows)


def _setting(text: str) -> tuple[str, str, str]:
    group, _, kv = text.rpartition(",")
    key, eq, value = kv.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected <backend>,<setting>=<value>, got '{text}'")
    return group, key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="naiad validate",
        description="Check model repositories without serving them: configs (file:line), "
                    "auto-complete, version policies, model files, python imports, ensembles.")
    p.add_argument("repositories", nargs="+", metavar="REPO",
                   help="Model repository path or URL (s3://, gs://, as the server takes).")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--print-config", action="store_true",
                   help="Print every model's completed configuration (what the server serves).")
    p.add_argument("--initialize", action="store_true",
                   help="Also load each model with its backend and run initialize (slower; "
                        "runs model code).")
    p.add_argument("--model-config-name", default="")
    p.add_argument("--disable-auto-complete-config", "--strict-model-config",
                   dest="no_auto_complete", action="store_true")
    p.add_argument("--backend-config", action="append", default=[], type=_setting,
                   metavar="BACKEND,SETTING=VALUE")
    return p


def main(argv: list[str]) -> int:
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    backend_config: dict[str, dict[str, str]] = {}
    for group, key, value in ns.backend_config:
        backend_config.setdefault(group, {})[key] = value
    # the report says it all: no log lines (the repository's warnings are captured)
    root = logging.getLogger("naiad")
    root.addHandler(logging.NullHandler())
    root.setLevel(logging.CRITICAL)
    logging.getLogger("naiad.repository").setLevel(logging.WARNING)
    reports, problems = validate_repositories(
        ns.repositories, config_name=ns.model_config_name,
        auto_complete=not ns.no_auto_complete, backend_config=backend_config,
        initialize=ns.initialize)
    failed = bool(problems) or any(r.errors for r in reports) or not reports
    if ns.format == "json":
        doc = {"ok": not failed, "repository_errors": problems,
               "models": [r.as_dict(ns.print_config) for r in reports],
               "summary": {s: sum(1 for r in reports if r.status == s)
                           for s in ("OK", "WARNING", "ERROR")}}
        print(json.dumps(doc, indent=2))
        return 1 if failed else 0
    for problem in problems:
        print(f"error: {problem}")
    if not reports and not problems:
        print("error: no models found")
    if reports:
        print(_table(reports))
    for r in reports:
        for e in r.errors:
            print(f"{r.name}: error: {e}")
        for w in r.warnings:
            print(f"{r.name}: warning: {w}")
    if ns.print_config:
        for r in reports:
            if r.config is not None:
                print(f"\n# {r.name} ({os.path.join(r.model_dir, 'config.pbtxt')}, completed)")
                print(text_format.MessageToString(r.config), end="")
    counts = {s: sum(1 for r in reports if r.status == s) for s in ("OK", "WARNING", "ERROR")}
    print(f"\n{len(reports)} model{'s' if len(reports) != 1 else ''}: {counts['OK']} ok, "
          f"{counts['WARNING']} with warnings, {counts['ERROR']} with errors")
    return 1 if failed else 0
