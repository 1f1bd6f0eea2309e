"""proto/converter.proto: the committed generated code is what the script makes of it, and every rpc and field
has a comment."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("generate", ROOT / "proto" / "generate.py")
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)
    assert [p.name for p in written] == ["converter_pb2.py", "converter_pb2.pyi", "converter_pb2_grpc.py"]
    for path in written:
        committed = ROOT / generate.PACKAGE / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run python proto/generate.py"


def test_generate_script_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / generate.PACKAGE / "converter_pb2_grpc.py").is_file()


def test_every_rpc_and_field_is_commented(tmp_path: Path) -> None:
    out = tmp_path / "converter.desc"
    include = str(Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{generate.PROTO.parent}", f"-I{include}", "--include_source_info"]
    assert protoc.main([*args, f"--descriptor_set_out={out}", str(generate.PROTO)]) == 0
    (proto,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    commented = {
        tuple(location.path)
        for location in proto.source_code_info.location
        if location.leading_comments.strip() or location.trailing_comments.strip()
    }
    missing = []
    for index, method in enumerate(proto.service[0].method):
        if (6, 0, 2, index) not in commented:
            missing.append(f"rpc {method.name}")

    def fields(message: descriptor_pb2.DescriptorProto, path: tuple[int, ...]) -> None:
        for index, field in enumerate(message.field):
            if path + (2, index) not in commented:
                missing.append(f"{message.name}.{field.name}")
        for index, nested in enumerate(message.nested_type):
            if not nested.options.map_entry:  # a map field's key/value type: protoc's, commented at the field
                fields(nested, path + (3, index))

    for index, message in enumerate(proto.message_type):
        fields(message, (4, index))
    assert not missing, f"fields and rpcs without a comment: {missing}"
