"""Per-model Python environments: ``EXECUTION_ENV_PATH``.

    parameters { key: "EXECUTION_ENV_PATH"
                 value: { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }

names a Python environment for one model: a folder (a virtual environment, a
conda environment, an unpacked conda-pack archive) or an archive of one
(``.tar.gz``/``.tgz``/``.tar``, as ``conda-pack`` writes them). An archive is
unpacked once into a cache keyed by the SHA-256 of its content
(``--backend-config=python,env-cache-dir=PATH``, else ``$NAIAD_PYTHON_ENV_CACHE``,
else ``~/.cache/naiad/python_envs``), shared by every model and server run that
names the same content; ``bin/conda-unpack`` is run there once when the archive
has it. ``$$TRITON_MODEL_DIRECTORY`` is the model's folder, and a path built
on it must stay inside it.

The model's instances then run as worker processes (``process.py``: the same
tensors-through-shared-memory path as ``EXECUTION_MODE: process``) started with
the environment's own interpreter, ``python -I``: its site-packages, not the
server's. Only naiad's own package is added (by path, without the folder
around it), which is why the environment needs nothing of naiad's
dependencies but numpy.

Where Triton needs a ``triton_python_backend_stub`` built for the
environment's Python version, naiad needs none: the environment's interpreter
runs the worker. It must be the server's Python minor version (tensors and
messages cross between the two) and have numpy; a load that finds otherwise
fails with a message saying which.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import threading

from naiad.core.errors import InvalidArgument

log = logging.getLogger("naiad.backends.python")

PARAMETER = "EXECUTION_ENV_PATH"
MODEL_DIR_VARIABLE = "$$TRITON_MODEL_DIRECTORY"
CACHE_ENV = "NAIAD_PYTHON_ENV_CACHE"
CACHE_KEY = "env-cache-dir"
_ARCHIVES = (".tar.gz", ".tgz", ".tar")
_COMPLETE = ".naiad-unpacked"
PROBE_TIMEOUT_S = 120.0

# what the probe reports: the interpreter's version and whether numpy imports
_PROBE = (
    "import json, sys\n"
    "info = {'version': list(sys.version_info[:2]), 'executable': sys.executable}\n"
    "try:\n"
    "    import numpy\n"
    "    info['numpy'] = numpy.__version__\n"
    "except Exception as exc:\n"
    "    info['numpy'] = None\n"
    "    info['numpy_error'] = f'{type(exc).__name__}: {exc}'\n"
    "print(json.dumps(info))\n"
)


@dataclasses.dataclass(frozen=True)
class Environment:
    """A Python environment ready to run a model's worker processes."""

    source: str  # what the config names, resolved
    root: str  # the environment's folder (the unpacked copy for an archive)
    python: str  # its interpreter
    numpy: str  # its numpy version

    def process_environ(self) -> dict[str, str]:
        """The worker's environment variables: the server's, as the environment's
        activation would leave them (its bin first on PATH), without the server's
        PYTHON* settings (``-I`` ignores them anyway)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
        env["PATH"] = os.pathsep.join([os.path.join(self.root, "bin"),
                                       os.environ.get("PATH", "")])
        if os.path.isdir(os.path.join(self.root, "conda-meta")):
            env["CONDA_PREFIX"] = self.root
        else:
            env["VIRTUAL_ENV"] = self.root
        return env


def requested(config) -> str:
    """The EXECUTION_ENV_PATH a config names ("" for none)."""
    param = config.parameters.get(PARAMETER)
    return param.string_value.strip() if param is not None else ""


def resolve_path(value: str, model_dir: str, model_name: str) -> str:
    """``value`` with ``$$TRITON_MODEL_DIRECTORY`` replaced; kept inside the model folder."""
    if MODEL_DIR_VARIABLE in value:
        path = os.path.realpath(value.replace(MODEL_DIR_VARIABLE, model_dir))
        base = os.path.realpath(model_dir)
        if os.path.commonpath([path, base]) != base:
            raise InvalidArgument(
                f"{PARAMETER} of model '{model_name}' ('{value}') leads outside the model "
                f"directory '{model_dir}'")
        return path
    return os.path.realpath(value)


def cache_root(backend_config: dict[str, str] | None) -> str:
    configured = (backend_config or {}).get(CACHE_KEY) or os.environ.get(CACHE_ENV)
    if configured:
        return os.path.abspath(os.path.expanduser(configured))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "naiad", "python_envs")


_lock = threading.Lock()
_digests: dict[tuple[str, int, int], str] = {}
_probed: dict[tuple[str, str], Environment] = {}


def _digest(path: str) -> str:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    with _lock:
        known = _digests.get(key)
    if known is not None:
        return known
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _lock:
        _digests[key] = digest
    return digest


def _check_members(tar: tarfile.TarFile, archive: str, model_name: str) -> None:
    """Refuse what could write outside the destination: absolute names, '..', devices."""
    for member in tar.getmembers():
        name = member.name
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts:
            raise InvalidArgument(
                f"{PARAMETER} of model '{model_name}': archive '{archive}' has a member "
                f"outside its folder ('{name}'); refused")
        if member.isdev():
            raise InvalidArgument(
                f"{PARAMETER} of model '{model_name}': archive '{archive}' has a device "
                f"file ('{name}'); refused")
        if member.islnk() and (os.path.isabs(member.linkname) or
                               ".." in member.linkname.replace("\\", "/").split("/")):
            raise InvalidArgument(
                f"{PARAMETER} of model '{model_name}': archive '{archive}' has a hard link "
                f"outside its folder ('{name}'); refused")


def _extract(archive: str, dest: str, model_name: str) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            _check_members(tar, archive, model_name)
            if hasattr(tarfile, "tar_filter"):
                # also refuses writing through a symlink the archive made earlier
                tar.extractall(dest, filter="tar")
            else:  # pragma: no cover - Python without extraction filters
                base = os.path.realpath(dest)
                for member in tar.getmembers():
                    target = os.path.realpath(os.path.join(dest, member.name))
                    if os.path.commonpath([target, base]) != base:
                        raise InvalidArgument(
                            f"{PARAMETER} of model '{model_name}': archive member "
                            f"'{member.name}' leads outside its folder; refused")
                    tar.extract(member, dest)
    except (tarfile.TarError, OSError, EOFError) as exc:  # a FilterError is a TarError
        raise InvalidArgument(
            f"{PARAMETER} of model '{model_name}': cannot unpack '{archive}': {exc}") from None


def unpack(archive: str, root: str, model_name: str) -> str:
    """The folder ``archive`` is unpacked in (unpacking it the first time)."""
    digest = _digest(archive)
    dest = os.path.join(root, digest[:32])
    if os.path.isfile(os.path.join(dest, _COMPLETE)):
        return dest
    os.makedirs(root, exist_ok=True)
    import fcntl

    with open(os.path.join(root, digest[:32] + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one unpacking per content, across servers
        if os.path.isfile(os.path.join(dest, _COMPLETE)):
            return dest
        work = f"{dest}.partial-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(work)
        log.info("model '%s': unpacking Python environment '%s' into '%s'", model_name,
                 archive, dest)
        try:
            _extract(archive, work, model_name)
            _conda_unpack(work, model_name)
            os.rename(work, dest)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        with open(os.path.join(dest, _COMPLETE), "w") as f:
            f.write(archive + "\n")
    return dest


def _conda_unpack(folder: str, model_name: str) -> None:
    """A conda-pack archive's own fix-up of the prefixes baked into its files."""
    script = os.path.join(folder, "bin", "conda-unpack")
    python = _interpreter(folder)
    if not os.path.isfile(script) or python is None:
        return
    try:
        subprocess.run([python, script], cwd=folder, capture_output=True, check=True,
                       timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("model '%s': conda-unpack in '%s' failed: %s", model_name, folder, exc)


def _interpreter(root: str) -> str | None:
    for name in ("python3", "python"):
        path = os.path.join(root, "bin", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def prepare(value: str, model_dir: str, model_name: str,
            backend_config: dict[str, str] | None = None) -> Environment:
    """The environment ``EXECUTION_ENV_PATH = value`` names, checked and ready."""
    source = resolve_path(value, model_dir, model_name)
    if os.path.isdir(source):
        root = source
    elif os.path.isfile(source):
        if not source.endswith(_ARCHIVES):
            raise InvalidArgument(
                f"{PARAMETER} of model '{model_name}' names '{source}', which is neither a "
                "folder nor a .tar.gz, .tgz or .tar archive")
        root = unpack(source, cache_root(backend_config), model_name)
    else:
        raise InvalidArgument(
            f"{PARAMETER} of model '{model_name}' names '{source}', which does not exist")
    python = _interpreter(root)
    if python is None:
        raise InvalidArgument(
            f"{PARAMETER} of model '{model_name}': no Python interpreter in '{source}' "
            "(bin/python3 or bin/python)")
    key = (root, python)
    with _lock:
        known = _probed.get(key)
    if known is not None:
        return known
    env = Environment(source, root, python, "")
    try:
        done = subprocess.run([python, "-I", "-c", _PROBE], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, env=env.process_environ())
        info = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 \
            else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        raise InvalidArgument(
            f"{PARAMETER} of model '{model_name}': the interpreter '{python}' does not run: "
            f"{exc}") from None
    if info is None:
        raise InvalidArgument(
            f"{PARAMETER} of model '{model_name}': the interpreter '{python}' does not run: "
            f"{done.stderr.strip()[-500:]}")
    theirs = tuple(info["version"])
    ours = sys.version_info[:2]
    if theirs != ours:
        raise InvalidArgument(
            f"{PARAMETER} of model '{model_name}': the environment '{source}' has Python "
            f"{theirs[0]}.{theirs[1]}, the server runs Python {ours[0]}.{ours[1]}; the "
            "environment must have the server's Python version")
    if not info.get("numpy"):
        raise InvalidArgument(
            f"{PARAMETER} of model '{model_name}': the environment '{source}' has no numpy "
            f"({info.get('numpy_error', 'not found')}); the python backend needs numpy in "
            "the model's environment")
    env = Environment(source, root, python, info["numpy"])
    with _lock:
        _probed[key] = env
    log.info("model '%s': Python environment '%s' (Python %d.%d, numpy %s)", model_name,
             source, ours[0], ours[1], env.numpy)
    return env


def worker_command(env: Environment, *args: str) -> list[str]:
    """The command that starts a worker (``_env_worker.py``) in ``env``."""
    boot = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_env_worker.py")
    return [env.python, "-I", boot, *args]


def auto_complete(env: Environment, model_file: str, label: str, config: dict) -> dict | None:
    """Run the model's ``auto_complete_config`` in its environment: the completed
    config, or None when the model has no such method."""
    try:
        done = subprocess.run(worker_command(env, "auto-complete", model_file, label),
                              input=json.dumps(config), capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, env=env.process_environ())
    except (OSError, subprocess.SubprocessError) as exc:
        raise InvalidArgument(f"auto_complete_config of '{model_file}' failed: {exc}") from None
    lines = done.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1])
    except (ValueError, IndexError):
        raise InvalidArgument(
            f"auto_complete_config of '{model_file}' failed: "
            f"{done.stderr.strip()[-1000:] or 'no answer'}") from None
    if "error" in reply:
        raise InvalidArgument(reply["error"])
    return reply.get("config")
