"""Each python model version imports its own modules, as under Triton.

Triton runs every python model in its own stub process with ``<model>/<version>``
and ``<model>`` on ``sys.path``, so a model's helper modules (``helpers.py``
beside ``model.py``, a package folder, a module in the model folder) are its
own. naiad runs the models of a server in one interpreter, where ``sys.path``
and ``sys.modules`` are shared: two models that both ``from helpers import X``
would get whichever ``helpers`` was imported first.

So every loaded model version gets a *scope*: a private package (named
``_naiad_scope<N>_<model>_<version>`` in ``sys.modules``) whose ``__path__`` is
``[<model>/<version>, <model>]``, Triton's search order. ``model.py`` is loaded
as ``<scope>.<version>.model`` (relative imports work as in Triton's
``<version>.model``), and every module of the scope gets its own
``__builtins__`` whose ``__import__`` maps the scope's names: ``import helpers``
in model code imports ``<scope>.helpers`` when ``helpers`` is a module or
package in the model's folders. Names of the standard library, and names the
model's folders do not hold, are imported the ordinary way and shared
(site-packages, numpy, ``triton_python_backend_utils``). A new load (a reload,
an unload then load) gets a new scope, so everything is imported again from
disk; sources are compiled on each load, never from a stale ``__pycache__``.

Code outside the model that imports one of the model's modules by its bare
name while the model's code is on the stack (``pickle`` restoring an object
whose class lives in ``helpers.py``, ``importlib.import_module("helpers")``)
gets a stand-in module in ``sys.modules`` that resolves its attributes in the
scope of the model whose code is calling (never where the server itself has a
module of that name).

One difference from Triton remains (documented in the README): a model's own
module named like a standard-library module is not the model's (Triton puts the
model folders last on ``sys.path``, so the standard library wins there too),
while one named like an installed third-party package *is* the model's (under
Triton the installed package wins; naiad's server environment holds packages
Triton's stub would not see, and a model must not change meaning with them).

This module uses only the standard library and ``naiad.core.errors``: worker
processes running another Python environment import it too.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import importlib.util
import itertools
import logging
import os
import re
import sys
import threading
import types

from naiad.core.errors import InvalidArgument, NaiadError

log = logging.getLogger("naiad.backends.python")

PREFIX = "_naiad_scope"
# names that are always the server's, even if a model folder has a file of that name
_SHARED = frozenset({"triton_python_backend_utils", "c_python_backend_utils", "naiad"})
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) | frozenset(sys.builtin_module_names)

_ids = itertools.count(1)
_lock = threading.Lock()
_scopes: dict[str, "ModelScope"] = {}
# every top-level name some scope owns (a filter before looking at the stack)
_owned_names: set[str] = set()
# every folder a scope searched (never the server's, even once the model is gone)
_model_folders: set[str] = set()
_original_import = builtins.__import__
_PathFinder = importlib.machinery.PathFinder


def describe_exception(exc: BaseException) -> str:
    """``Type: text`` for any exception, with a readable text for exits."""
    name = type(exc).__name__
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None:
            return f"{name}: sys.exit() was called"
        if isinstance(code, int):
            return f"{name}: sys.exit({code}) was called (exit code {code})"
        return f"{name}: {code}"
    text = str(exc)
    return f"{name}: {text}" if text else name


class _ScopedSourceLoader(importlib.machinery.SourceFileLoader):
    """Loads a module of a scope: the scope's ``__builtins__``, compiled from source."""

    def __init__(self, fullname: str, path: str, scope: "ModelScope"):
        super().__init__(fullname, path)
        self._scope = scope

    def get_code(self, fullname):
        # never from __pycache__: an edit within the same second (same size) must show
        # on reload; the repository may be read-only anyway
        return self.source_to_code(self.get_data(self.path), self.path)

    def exec_module(self, module) -> None:
        module.__dict__["__builtins__"] = self._scope.builtins
        super().exec_module(module)


class _ScopedSourcelessLoader(importlib.machinery.SourcelessFileLoader):
    def __init__(self, fullname: str, path: str, scope: "ModelScope"):
        super().__init__(fullname, path)
        self._scope = scope

    def exec_module(self, module) -> None:
        module.__dict__["__builtins__"] = self._scope.builtins
        super().exec_module(module)


class _ScopeFinder:
    """Finds the modules of a scope (and of a stand-in's package) on the meta path."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname.startswith(PREFIX):
            root, dot, _ = fullname.partition(".")
            scope = _scopes.get(root)
            if scope is None or not dot:
                return None
            spec = _PathFinder.find_spec(fullname, path, target)
            if spec is None:
                return None
            loader = spec.loader
            if type(loader) is importlib.machinery.SourceFileLoader:
                spec.loader = _ScopedSourceLoader(fullname, spec.origin, scope)
            elif type(loader) is importlib.machinery.SourcelessFileLoader:
                spec.loader = _ScopedSourcelessLoader(fullname, spec.origin, scope)
            return spec
        top, dot, _ = fullname.partition(".")
        if dot:
            if isinstance(sys.modules.get(top), _StandIn):
                return importlib.machinery.ModuleSpec(fullname, _StandInLoader())
            return None
        if fullname in _owned_names:
            # a bare model-module name imported by code outside the model (importlib,
            # a library) while a model that has it runs: that model's, through a
            # stand-in, unless the server has a module of that name
            scope = current_scope()
            if scope is not None and scope.owns(fullname) and \
                    scope._stand_ins_allowed(fullname):
                return importlib.machinery.ModuleSpec(fullname, _StandInLoader())
        return None

    @staticmethod
    def invalidate_caches() -> None:
        pass


class _StandIn(types.ModuleType):
    """``sys.modules[name]`` for a model module imported by a bare name from outside
    the model: attributes come from the module of that name in the scope of the
    model whose code is running."""

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__") and attr != "__path__":
            raise AttributeError(attr)
        target = self._naiad_target()
        if target is None:
            raise AttributeError(
                f"module '{self.__name__}' belongs to a python model and can only be used "
                "while that model's code runs")
        return getattr(target, attr)

    def __setattr__(self, attr: str, value) -> None:
        if attr.startswith("__") and attr.endswith("__"):
            super().__setattr__(attr, value)
        # submodules set on their parent by the import system: resolved per scope instead

    def _naiad_target(self):
        scope = current_scope()
        if scope is None or not scope.owns(self.__name__.partition(".")[0]):
            return None
        return importlib.import_module(f"{scope.package}.{self.__name__}")


def _ensure_stand_ins(name: str) -> None:
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix not in sys.modules:
            module = _StandIn(prefix)
            module.__spec__ = importlib.machinery.ModuleSpec(prefix, _StandInLoader())
            module.__loader__ = module.__spec__.loader
            sys.modules.setdefault(prefix, module)


class _StandInLoader:
    @staticmethod
    def create_module(spec):
        return _StandIn(spec.name)

    @staticmethod
    def exec_module(module) -> None:
        if module._naiad_target() is None:
            raise ModuleNotFoundError(f"No module named '{module.__name__}'",
                                      name=module.__name__)


def current_scope(depth: int = 256) -> "ModelScope | None":
    """The scope of the innermost model code on the calling thread's stack."""
    frame = sys._getframe(1)
    while frame is not None and depth > 0:
        name = frame.f_globals.get("__name__")
        if isinstance(name, str) and name.startswith(PREFIX):
            scope = _scopes.get(name.partition(".")[0])
            if scope is not None:
                return scope
        frame = frame.f_back
        depth -= 1
    return None


def _install() -> None:
    with _lock:
        if _ScopeFinder not in sys.meta_path:
            sys.meta_path.insert(0, _ScopeFinder)


def server_path() -> list[str]:
    """``sys.path`` without the folders of models (which a model may have put there
    itself, as some written for Triton do): where the server's own modules are."""
    with _lock:
        private = tuple(_model_folders)
    if not private:
        return list(sys.path)
    out = []
    for p in sys.path:
        if isinstance(p, str) and p:
            a = os.path.abspath(p)
            if any(a == q or a.startswith(q + os.sep) for q in private):
                continue
        out.append(p)
    return out


def _shared_find(top: str):
    """``top`` as the server would import it (see :func:`server_path`)."""
    try:
        return _PathFinder.find_spec(top, server_path())
    except (ImportError, ValueError, OSError):
        return None


def _safe(label: str) -> str:
    return re.sub(r"\W", "_", label)[:60]


class ModelScope:
    """The private import namespace of one loaded model version."""

    def __init__(self, version_dir: str, model_dir: str, label: str):
        _install()
        self.package = f"{PREFIX}{next(_ids)}_{_safe(label)}"
        paths = []
        for p in (version_dir, model_dir):
            p = os.path.abspath(p)
            if p not in paths:
                paths.append(p)
        self.paths = paths
        self._owned: dict[str, bool] = {}
        self._stand_in_ok: dict[str, bool] = {}
        self.server = None  # the server the model runs in (for its BLS calls from threads)
        self.builtins = dict(builtins.__dict__)
        self.builtins["__import__"] = self._import
        root = types.ModuleType(self.package, f"the modules of python model {label}")
        root.__path__ = list(paths)
        root.__package__ = self.package
        spec = importlib.machinery.ModuleSpec(self.package, None, is_package=True)
        spec.submodule_search_locations = root.__path__
        root.__spec__ = spec
        # directory listings may predate an edit made for this load
        for key in list(sys.path_importer_cache):
            if isinstance(key, str) and any(key == p or key.startswith(p + os.sep)
                                            for p in paths):
                sys.path_importer_cache.pop(key, None)
        with _lock:
            _scopes[self.package] = self
            _model_folders.update(paths)
            sys.modules[self.package] = root
        self.closed = False
        for name in self._module_names():
            self.owns(name)

    def _module_names(self) -> set[str]:
        """The top-level module names the model's folders hold."""
        suffixes = tuple(importlib.machinery.all_suffixes())
        names = set()
        for folder in self.paths:
            try:
                entries = os.listdir(folder)
            except OSError:
                continue
            for entry in entries:
                if entry.endswith(suffixes):
                    name = entry.split(".", 1)[0]
                elif os.path.isdir(os.path.join(folder, entry)):
                    name = entry
                else:
                    continue
                if name.isidentifier():
                    names.add(name)
        return names

    # -- which names are the model's --------------------------------------------------

    def owns(self, top: str) -> bool:
        """Whether the top-level module name ``top`` is one of the model's own."""
        owned = self._owned.get(top)
        if owned is None:
            owned = self._owned[top] = self._classify(top)
            if owned:
                _owned_names.add(top)
        return owned

    def _classify(self, top: str) -> bool:
        if top in _SHARED or top in _STDLIB or not top.isidentifier():
            return False
        try:
            spec = _PathFinder.find_spec(top, self.paths)
        except (ImportError, ValueError, OSError):
            return False
        if spec is None:
            return False
        if spec.loader is None or spec.origin is None or spec.origin == "namespace":
            # a folder without __init__.py (often just data): the model's only if
            # nothing else provides the name
            shared = _shared_find(top)
            return shared is None or shared.origin is None
        return True

    def _stand_ins_allowed(self, top: str) -> bool:
        """A stand-in never hides a module the server itself could import."""
        allowed = self._stand_in_ok.get(top)
        if allowed is None:
            allowed = self._stand_in_ok[top] = _shared_find(top) is None
        return allowed

    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name:
            top = name.partition(".")[0]
            owned = self._owned.get(top)
            if owned is None:
                owned = self.owns(top)
            if owned:
                module = _original_import(f"{self.package}.{name}", globals, locals,
                                          fromlist, 0)
                if name not in sys.modules and self._stand_ins_allowed(top):
                    # C code calling __import__ for model code (pickle's find_class)
                    # reads sys.modules[name] afterwards: a stand-in answers there
                    _ensure_stand_ins(name)
                if fromlist:
                    return module
                return sys.modules[f"{self.package}.{top}"]
        return _original_import(name, globals, locals, fromlist, level)

    # -- the model file ----------------------------------------------------------------

    def import_file(self, path: str):
        """Import ``path`` (the model.py) as ``<scope>.<folder>.<stem>``."""
        path = os.path.abspath(path)
        folder = os.path.dirname(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        parent = f"{self.package}.{_safe(os.path.basename(folder)) or 'version'}"
        if parent not in sys.modules:
            pkg = types.ModuleType(parent)
            pkg.__path__ = [folder]
            pkg.__package__ = parent
            pspec = importlib.machinery.ModuleSpec(parent, None, is_package=True)
            pspec.submodule_search_locations = pkg.__path__
            pkg.__spec__ = pspec
            sys.modules[parent] = pkg
        name = f"{parent}.{_safe(stem)}"
        loader = _ScopedSourceLoader(name, path, self)
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module

    def close(self) -> None:
        """Forget the scope's modules (objects still referenced stay alive)."""
        if self.closed:
            return
        self.closed = True
        with _lock:
            _scopes.pop(self.package, None)
            prefix = self.package + "."
            for key in [k for k in sys.modules if k == self.package or k.startswith(prefix)]:
                sys.modules.pop(key, None)
            # stand-ins for names no open scope has any more: a later import of that name
            # by code outside any model (a tool, a script beside the server) is its own
            live = {name for scope in _scopes.values()
                    for name, owned in scope._owned.items() if owned}
            for key, module in list(sys.modules.items()):
                if isinstance(module, _StandIn) and key.partition(".")[0] not in live:
                    sys.modules.pop(key, None)
            _owned_names.intersection_update(live)


def import_model_file(path: str, label: str, version_dir: str | None = None,
                      model_dir: str | None = None):
    """Import a model.py in a new scope: (module, TritonPythonModel class, scope).

    Any failure, ``SystemExit`` from a parser at module level included, is an
    InvalidArgument naming the file and the exception.
    """
    if not os.path.isfile(path):
        raise InvalidArgument(f"python model file '{path}' not found")
    if version_dir is None:
        version_dir = os.path.dirname(os.path.abspath(path))
    if model_dir is None:
        model_dir = os.path.dirname(os.path.abspath(version_dir))
    scope = ModelScope(version_dir, model_dir, label)
    try:
        module = scope.import_file(path)
    except NaiadError:
        scope.close()
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure of model code fails the load
        scope.close()
        log.error("importing '%s' failed: %s", path, describe_exception(exc),
                  exc_info=not isinstance(exc, (SystemExit, KeyboardInterrupt)))
        raise InvalidArgument(
            f"failed to import python model file '{path}': {describe_exception(exc)}"
        ) from None
    cls = getattr(module, "TritonPythonModel", None)
    if cls is None:
        scope.close()
        raise InvalidArgument(f"python model file '{path}' does not define class TritonPythonModel")
    return module, cls, scope


def scope_of(module) -> "ModelScope | None":
    """The scope a module imported by :func:`import_model_file` belongs to."""
    name = getattr(module, "__name__", "")
    if not isinstance(name, str) or not name.startswith(PREFIX):
        return None
    return _scopes.get(name.partition(".")[0])
