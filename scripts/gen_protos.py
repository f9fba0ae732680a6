#!/usr/bin/env python3
"""Regenerate naiad's protobuf / gRPC Python modules from naiad/protocol/*.proto.

Usage (from anywhere; paths are resolved relative to the repository root):

    python scripts/gen_protos.py           # regenerate into naiad/protocol/
    python scripts/gen_protos.py --check   # exit 1 if committed files are stale

The .proto files are addressed as ``naiad/protocol/<name>.proto`` from the
repository root, so generated modules import each other as
``from naiad.protocol import model_config_pb2``.

After running protoc the generated ``*_pb2.py`` modules are rewritten (two
calls, see _PB2_REWRITES) to register their descriptors in naiad's private
pool (``naiad.protocol._pool``) rather than protobuf's default pool, so they
can be imported next to tritonclient's modules, which define the same names;
see that module for details.

The grpcio-tools version is pinned (GRPCIO_TOOLS_VERSION) because it decides
the protobuf "gencode" version written into the modules, which in turn decides
the protobuf runtimes they load on, and the minimum grpcio the *_pb2_grpc.py
modules accept. grpcio-tools 1.74.0 bundles protoc 31.1 and writes gencode
6.31.1, so the modules load on every protobuf >= 6.31.1, 7.x included (the 7.x
runtime only requires runtime >= gencode; checked with 6.31.1, 6.33.6, 7.34.0
and 7.36.2, upb and pure-Python). grpcio-tools 1.74-1.80 all write gencode
6.31.1 and differ only in the grpcio floor stamped into *_pb2_grpc.py
(GRPC_GENERATED_VERSION = tools version), so the oldest of them is used;
1.81+ bundle newer protoc (1.81 already needs protobuf>=6.33.5; 1.85 writes
7.x gencode, which every protobuf 6 runtime refuses). Runtime requirement of the generated code:
protobuf>=6.31.1,<8 and grpcio>=1.74.0.
"""

from __future__ import annotations

import argparse
import difflib
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

GRPCIO_TOOLS_VERSION = "1.74.0"
# The protobuf gencode version the pinned grpcio-tools writes (sanity check).
EXPECTED_GENCODE = "6.31.1"

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR_REL = Path("naiad") / "protocol"
PROTO_DIR = ROOT / PROTO_DIR_REL
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")

_BUILDER_IMPORT = "from google.protobuf.internal import builder as _builder\n"
_POOL_IMPORT = "from naiad.protocol import _pool as _naiad_pool\n"
# (protoc's text, naiad's replacement); each must occur exactly once.
_PB2_REWRITES = (
    (_BUILDER_IMPORT, _BUILDER_IMPORT + _POOL_IMPORT),
    ("_descriptor_pool.Default().AddSerializedFile(", "_naiad_pool.POOL.AddSerializedFile("),
    ("_builder.BuildTopDescriptorsAndMessages(", "_naiad_pool.build_top_descriptors_and_messages("),
)


def _installed_tools_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return version("grpcio-tools")
    except PackageNotFoundError:
        return None


def _check_tools_version(allow_other: bool) -> None:
    installed = _installed_tools_version()
    if installed == GRPCIO_TOOLS_VERSION:
        return
    msg = (
        f"gen_protos: grpcio-tools {GRPCIO_TOOLS_VERSION} is required "
        f"(found {installed or 'none'}).\n"
        f"  Install it with:  pip install 'grpcio-tools=={GRPCIO_TOOLS_VERSION}'\n"
        f"  (it needs protobuf>=6.31.1,<7 in the environment that runs protoc; the\n"
        f"  generated code itself runs on protobuf>=6.31.1 including 7.x).\n"
        f"  A different grpcio-tools writes a different protobuf gencode version and\n"
        f"  grpcio floor into the generated modules."
    )
    if allow_other:
        print(msg.replace("is required", "is expected") + "\n  Continuing (--any-tools-version).",
              file=sys.stderr)
        return
    print(msg, file=sys.stderr)
    sys.exit(2)


def _proto_files() -> list[str]:
    protos = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    if not protos:
        sys.exit(f"gen_protos: no .proto files under {PROTO_DIR}")
    return [(PROTO_DIR_REL / name).as_posix() for name in protos]


def _patch_pb2(path: Path) -> None:
    """Make a generated *_pb2.py register its file in naiad's private pool."""
    text = path.read_text(encoding="utf-8")
    for old, new in _PB2_REWRITES:
        if text.count(old) != 1:
            sys.exit(
                f"gen_protos: unexpected protoc output in {path.name} ({old.strip()!r} "
                "not found exactly once); update _PB2_REWRITES for this grpcio-tools version"
            )
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")


def _check_gencode(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    m = re.search(r"^# Protobuf Python Version: (\S+)$", text, re.M)
    found = m.group(1) if m else "unknown"
    if found != EXPECTED_GENCODE:
        print(
            f"gen_protos: warning: {path.name} has protobuf gencode {found}, "
            f"expected {EXPECTED_GENCODE}",
            file=sys.stderr,
        )


def _generate(out_root: Path) -> list[Path]:
    """Run protoc into out_root; return the generated files (absolute paths)."""
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--pyi_out={out_root}",
        *_proto_files(),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        sys.exit(f"gen_protos: protoc failed (exit {proc.returncode})")
    gen_dir = out_root / PROTO_DIR_REL
    files = sorted(p for p in gen_dir.iterdir() if p.name.endswith(GENERATED_SUFFIXES))
    for f in files:
        if f.name.endswith("_pb2.py"):
            _patch_pb2(f)
            _check_gencode(f)
    return files


def _committed_files() -> list[Path]:
    return sorted(p for p in PROTO_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def _check(generated: list[Path]) -> int:
    gen_names = {p.name: p for p in generated}
    have_names = {p.name: p for p in _committed_files()}
    problems = 0
    for name in sorted(gen_names.keys() - have_names.keys()):
        print(f"missing: {PROTO_DIR_REL / name}")
        problems += 1
    for name in sorted(have_names.keys() - gen_names.keys()):
        print(f"stale (no longer generated): {PROTO_DIR_REL / name}")
        problems += 1
    for name in sorted(gen_names.keys() & have_names.keys()):
        if filecmp.cmp(gen_names[name], have_names[name], shallow=False):
            continue
        problems += 1
        print(f"out of date: {PROTO_DIR_REL / name}")
        new = gen_names[name].read_text(encoding="utf-8").splitlines(keepends=True)
        old = have_names[name].read_text(encoding="utf-8").splitlines(keepends=True)
        diff = list(difflib.unified_diff(old, new, f"committed/{name}", f"generated/{name}", n=1))
        for line in diff[:40]:
            line = line.rstrip("\n")
            print(line if len(line) <= 160 else line[:157] + "...")
        if len(diff) > 40:
            print(f"... ({len(diff) - 40} more diff lines)")
    if problems:
        print(f"gen_protos --check: {problems} generated file(s) differ; "
              "run `python scripts/gen_protos.py`")
        return 1
    print(f"gen_protos --check: {len(generated)} generated files are up to date")
    return 0


def _install(generated: list[Path]) -> None:
    gen_names = {p.name for p in generated}
    for old in _committed_files():
        if old.name not in gen_names:
            old.unlink()
            print(f"removed stale {PROTO_DIR_REL / old.name}")
    for f in generated:
        dest = PROTO_DIR / f.name
        shutil.copyfile(f, dest)
        print(f"wrote {PROTO_DIR_REL / f.name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temp dir and fail if committed files differ")
    ap.add_argument("--any-tools-version", action="store_true",
                    help=f"proceed even if grpcio-tools is not {GRPCIO_TOOLS_VERSION}")
    args = ap.parse_args(argv)

    _check_tools_version(args.any_tools_version)
    with tempfile.TemporaryDirectory(prefix="naiad-protos-") as tmp:
        generated = _generate(Path(tmp))
        if args.check:
            return _check(generated)
        _install(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
