"""The vendored Triton protos are upstream's files unchanged, and the checked-in Python code is exactly
what the pinned grpcio-tools makes of them (``python -m service.grpc.stubs.generate``), so neither can
drift. (The generated modules are not imported here: their descriptors share the file name
``grpc_service.proto`` with tritonclient's copy, which the integration tests import.)"""

from __future__ import annotations

import hashlib

import pytest

from service.grpc.stubs import generate


def git_blob_hash(data: bytes) -> str:
    """What ``git hash-object`` says of a file: upstream's tree names its files by this."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_generated_files_are_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the test extra (requirements-dev.lock)")
    generate.generate(tmp_path)
    for path in generate.GENERATED:
        regenerated = (tmp_path / path).read_text()
        assert regenerated == (generate.ROOT / path).read_text(), f"{path} is stale: run python -m " \
            "service.grpc.stubs.generate"


@pytest.mark.parametrize("name", sorted(generate.UPSTREAM_BLOBS))
def test_the_protos_are_upstreams_unchanged(name):
    data = (generate.ROOT / generate.PROTO_DIR / name).read_bytes()
    assert git_blob_hash(data) == generate.UPSTREAM_BLOBS[name], f"{name} differs from Triton's at " \
        f"{generate.UPSTREAM_COMMIT}"
    text = data.decode()
    assert "NVIDIA CORPORATION" in text and "Redistribution and use in source and binary forms" in text  # BSD-3
    assert "package inference;" in text

