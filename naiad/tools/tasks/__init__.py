"""Task templates for ``naiad import --task``: pre/post-processing models and an ensemble.

A task turns an imported network (``<name>_model``) into a pipeline that
takes an image file and returns what the task means: an ensemble called
``<name>`` whose steps are a python pre-processing model, the network, and a
python post-processing model. The python models are template files
(``templates/``) copied into the repository with their settings in the
config's ``parameters``, so the repository runs on naiad and on Triton alike
(they need numpy and Pillow where they run).

Adding a task (issue 17 added keypoints, oriented detection, instance
segmentation, text detection/recognition this way):

1. in a new module here, subclass :class:`~naiad.tools.tasks.base.Task`:
   ``name``, ``description``, ``options`` (each setting and its help, shown
   in the docs), ``model_names(name)`` (the folders it writes, so ``--force``
   and clean-up know them) and ``build(ctx)`` (write them; return their
   names, the ensemble first); end the module with ``TASK = MyTask()``;
2. put its model.py templates in ``templates/`` (self-contained: numpy,
   Pillow, ``imagelib.py`` which is copied beside them);
3. add the module's name to ``_MODULES`` below.

``base.py`` has the interface and the helpers that do the repetitive parts:
:func:`image_input` reads the network's image tensor (layout, size,
channels), :func:`python_model` writes a templated python model,
:func:`ensemble` chains the steps, ``TaskContext.import_network`` imports a
further network file (a task with several networks), and :func:`finish`
checks everything written with ``naiad validate``'s checks. Task modules
import ``base`` only, never this package, so the registry can import them.
"""

from __future__ import annotations

import importlib

from naiad.tools.tasks.base import (  # noqa: F401 - the interface, importable from here
    TEMPLATES,
    ImageInput,
    Task,
    TaskContext,
    TaskError,
    ensemble,
    finish,
    image_input,
    image_size,
    network_output_dims,
    python_model,
    read_labels,
    tensor,
)

#: the task modules: each defines ``TASK``, an instance of its Task subclass
_MODULES = ("classification", "detection", "segmentation", "ocr", "instance_segmentation",
            "keypoints", "oriented_detection", "text_detection", "text_recognition")

TASKS: dict[str, Task] = {}


def register(task: Task) -> None:
    TASKS[task.name] = task


def _load() -> None:
    for name in _MODULES:
        register(importlib.import_module(f"naiad.tools.tasks.{name}").TASK)


def all_tasks() -> dict[str, Task]:
    _load()
    return dict(TASKS)


def get(name: str) -> Task:
    _load()
    task = TASKS.get(name)
    if task is None:
        raise TaskError(f"unknown task '{name}' (one of {', '.join(sorted(TASKS))})")
    return task
