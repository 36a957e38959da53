"""The checked-in Python code of the vendored .proto is exactly what the pinned grpcio-tools makes of it
(``python -m service.protocols.generate``), so the generated files can never drift from the proto."""

from __future__ import annotations

import pytest

from service.protocols import generate


def test_generated_files_are_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the test extra (requirements-dev.lock)")
    generate.generate(tmp_path)
    for path in generate.GENERATED:
        regenerated = (tmp_path / path).read_text()
        assert regenerated == (generate.ROOT / path).read_text(), f"{path} is stale: run python -m " \
            "service.protocols.generate"


def test_the_proto_names_its_origin_and_license():
    text = (generate.ROOT / generate.PROTO).read_text()
    assert "github.com/kserve/kserve/blob/" in text and "Licensed under the Apache License, Version 2.0" in text
    assert "package inference;" in text and "service GRPCInferenceService" in text
