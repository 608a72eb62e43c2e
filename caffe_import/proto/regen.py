"""Regenerate ``caffe_pb2.py`` from ``caffe.proto`` with the protoc bundled in grpcio-tools.

Run ``python -m caffe_import.proto.regen`` after editing the schema and commit both files. Using
``grpc_tools.protoc`` means no system ``protoc`` is needed and everyone generates with the same compiler version
(the one pinned in the dev dependencies).

The generated module is made to load on every protobuf runtime from 4.21 on: protoc writes a
``ValidateProtobufRuntimeVersion`` call that refuses any runtime older than the compiler (7.x here), although the
module itself only calls ``AddSerializedFile`` and the ``builder`` functions, which every 4.21+ runtime has.
`relax_runtime_check` removes that call, so the same package imports in images that ship an older protobuf (a GPU
image with protobuf 5, for instance; checked with 4.25, 5.29 and 6.31). The proto is compiled under its package path,
``caffe_import/proto/caffe.proto``, so the generated classes report ``caffe_import.proto.caffe_pb2`` as their
module (pickling works). The message names still live in package ``caffe``, so importing pycaffe's own
``caffe_pb2`` into the same process remains a descriptor-pool conflict, as it is between any two Caffe builds.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PACKAGE_ROOT = PROTO_DIR.parent.parent  # the directory that contains caffe_import/
PROTO_NAME = "caffe_import/proto/caffe.proto"  # the name the file is registered under; keep stable


def run_protoc(out_dir: Path, *extra_args: str) -> None:
    """Compile the schema with grpc_tools' protoc, writing generated files under ``out_dir``."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # dev-only dependency
        raise SystemExit("regen needs grpcio-tools: pip install grpcio-tools") from exc
    args = ["grpc_tools.protoc", f"--proto_path={PACKAGE_ROOT}", f"--python_out={out_dir}", *extra_args, PROTO_NAME]
    status = protoc.main(args)
    if status != 0:
        raise SystemExit(f"protoc failed with status {status} on {PROTO_DIR / 'caffe.proto'}")


_RUNTIME_IMPORT = "from google.protobuf import runtime_version as _runtime_version\n"
_RUNTIME_CHECK = re.compile(r"_runtime_version\.ValidateProtobufRuntimeVersion\(.*?\n\)\n", re.S)


def relax_runtime_check(source: str) -> str:
    """protoc's module text without its runtime-version check (see the module docstring)."""
    relaxed, count = _RUNTIME_CHECK.subn("", source.replace(_RUNTIME_IMPORT, ""))
    if count > 1 or "_runtime_version" in relaxed:
        raise SystemExit("regen: protoc's runtime-version check changed shape; update relax_runtime_check")
    return relaxed


def regenerate(target: Path = PROTO_DIR / "caffe_pb2.py") -> Path:
    """Generate into a scratch directory beside ``target``, then atomically rename over it.

    The scratch directory lives on the same filesystem as ``target`` so ``os.replace`` is a rename: an interrupted
    run never leaves a half-written module behind.
    """
    with tempfile.TemporaryDirectory(prefix=".regen-", dir=target.parent) as scratch:
        run_protoc(Path(scratch))
        generated = Path(scratch) / "caffe_import" / "proto" / "caffe_pb2.py"
        generated.write_text(relax_runtime_check(generated.read_text(encoding="utf-8")), encoding="utf-8")
        os.replace(generated, target)
    return target


def main() -> int:
    """Command-line entry point."""
    target = regenerate()
    print(f"wrote {target.relative_to(PACKAGE_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
