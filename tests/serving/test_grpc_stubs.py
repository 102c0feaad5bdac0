"""The committed gRPC message module is what grpcio-tools makes of the committed .proto, today.

Why committed rather than generated at install: a fresh install (pip, the image) then needs only the
grpcio and protobuf wheels, no protoc and no build step. This test keeps the two from drifting.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parents[2] / "serving" / "model_serving" / "api" / "v2_grpc"
PROTO = "open_inference.proto"
GENERATED = ("open_inference_pb2.py", "open_inference_pb2.pyi")


def test_the_committed_messages_match_the_proto(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools (the dev extra) regenerates the module")
    status = protoc.main(
        ["protoc", f"-I{FOLDER}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", str(FOLDER / PROTO)]
    )
    assert status == 0
    for name in GENERATED:
        assert (tmp_path / name).read_text() == (FOLDER / name).read_text(), (
            f"{name} is stale: regenerate it as serving/model_serving/api/v2_grpc/README.md says"
        )
