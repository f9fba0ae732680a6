"""Entry point of a python model's processes in the model's own Python environment.

Run as ``<env>/bin/python -I _env_worker.py ...`` (``environments.py``): the
environment's interpreter with its own site-packages only. naiad's package is
made importable by its folder alone (``naiad/__init__`` and its dependencies
are not loaded: the environment needs only numpy), then

* ``_env_worker.py FD``: the worker process (``process.worker_main``);
* ``_env_worker.py auto-complete MODEL_FILE LABEL``: runs the model's
  ``auto_complete_config`` on the JSON config read from stdin and prints
  ``{"config": ...}`` (or ``{"error": ...}``) as its last line.
"""

import json
import os
import sys
import types


def _naiad_package() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    package = os.path.dirname(os.path.dirname(here))  # .../naiad
    naiad = types.ModuleType("naiad", "naiad's package, without its server parts")
    naiad.__path__ = [package]
    sys.modules["naiad"] = naiad


def _auto_complete(model_file: str, label: str) -> dict:
    from naiad.backends.python import pb_utils
    from naiad.backends.python.isolation import describe_exception, import_model_file

    sys.modules.setdefault("triton_python_backend_utils", pb_utils)
    config = json.loads(sys.stdin.read())
    try:
        _module, cls, _scope = import_model_file(model_file, label)
        hook = getattr(cls, "auto_complete_config", None)
        if hook is None:
            return {"config": None}
        wrapper = pb_utils.ModelConfig(config)
        result = hook(wrapper)
    except BaseException as exc:  # noqa: BLE001 - reported to the server
        text = getattr(exc, "message", None)
        if not isinstance(text, str):
            text = describe_exception(exc)
        return {"error": f"auto_complete_config of model '{config.get('name')}' failed: {text}"}
    return {"config": (result if result is not None else wrapper).as_dict()}


def main() -> int:
    _naiad_package()
    if sys.argv[1] == "auto-complete":
        reply = _auto_complete(sys.argv[2], sys.argv[3])
        sys.stdout.write("\n" + json.dumps(reply) + "\n")
        return 0
    from naiad.backends.python import process

    return process.worker_main(int(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
