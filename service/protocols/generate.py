"""Regenerate the Python code of the vendored ``grpc_predict_v2.proto`` (the files are checked in).

``python -m service.protocols.generate [OUT_DIR]`` runs grpcio-tools' protoc (pinned in the dev
lock) from the repository root, so the generated modules import each other as
``service.protocols....``; OUT_DIR (default: the repository root) lets a test regenerate elsewhere
and compare (tests/test_grpc_codegen.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = "service/protocols/grpc_predict_v2.proto"
GENERATED = ("service/protocols/grpc_predict_v2_pb2.py", "service/protocols/grpc_predict_v2_pb2_grpc.py")


def generate(out: Path = ROOT) -> None:
    from grpc_tools import protoc

    code = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out}", f"--grpc_python_out={out}",
                        str(ROOT / PROTO)])
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
