"""Regenerate the Python code of the vendored Triton protos (the generated files are checked in).

``grpc_service.proto`` (service ``inference.GRPCInferenceService``) and the ``model_config.proto``
it imports are Triton's, byte for byte as they are in the public repository
github.com/triton-inference-server/common (BSD-3-Clause, their license headers kept) at the commit
:data:`UPSTREAM_COMMIT`; :data:`UPSTREAM_BLOBS` holds their git blob hashes there, so a test can
show that the vendored files are unchanged (tests/test_grpc_codegen.py).

``python -m service.grpc.stubs.generate [OUT_DIR]`` runs grpcio-tools' protoc (pinned in the dev
lock) with ``service/grpc/stubs`` as the import root, as Triton's own build does (the protos import
each other as ``"model_config.proto"``), and then makes the generated modules' imports of each
other package imports (``from service.grpc.stubs import model_config_pb2``), as tritonclient's
build does for its copy. OUT_DIR (default: the repository root) lets a test regenerate elsewhere
and compare.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = "service.grpc.stubs"
PROTO_DIR = "service/grpc/stubs"
UPSTREAM_REPOSITORY = "https://github.com/triton-inference-server/common"
UPSTREAM_COMMIT = "83adf7cf88a2f343005974dff3728be746de2d66"
UPSTREAM_BLOBS = {"grpc_service.proto": "451dd74f32e601b53244dc287c386d86e517794e",  # protobuf/<name> there
                  "model_config.proto": "58754167979894d3ac657ebaa9cc9d6aceb65957"}
PROTOS = tuple(f"{PROTO_DIR}/{name}" for name in UPSTREAM_BLOBS)
# model_config.proto has no service, so no _pb2_grpc module of its own
GENERATED = tuple(f"{PROTO_DIR}/{name}" for name in ("grpc_service_pb2.py", "grpc_service_pb2_grpc.py",
                                                     "model_config_pb2.py"))
SIBLING_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def generate(out: Path = ROOT) -> None:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(["grpc_tools.protoc", f"-I{ROOT / PROTO_DIR}", f"--python_out={tmp}",
                            f"--grpc_python_out={tmp}", *(str(ROOT / p) for p in PROTOS)])
        if code != 0:
            raise SystemExit(f"protoc failed with {code}")
        for path in GENERATED:
            text = (Path(tmp) / Path(path).name).read_text()
            target = out / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(SIBLING_IMPORT.sub(rf"from {PACKAGE} import \1 as \2", text))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
