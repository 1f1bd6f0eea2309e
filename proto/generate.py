"""Generate server/rpc/converter_pb2*.py from proto/converter.proto with grpcio-tools.

    python proto/generate.py            # rewrite server/rpc/
    python proto/generate.py --out DIR  # write the package tree under DIR (the staleness test compares it)

Never edit the generated files by hand. The proto is mapped to `server/rpc/converter.proto`, so that the
generated modules import each other as `server.rpc.converter_pb2`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "converter.proto"
PACKAGE = "server/rpc"  # where the generated modules live, relative to the repository root


def generate(out: Path) -> list[Path]:
    """Write converter_pb2.py, converter_pb2.pyi and converter_pb2_grpc.py into `out/server/rpc/`."""
    (out / PACKAGE).mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")  # the well-known types shipped with grpcio-tools
    args = [
        "grpc_tools.protoc",
        f"-I{PACKAGE}={PROTO.parent}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"{PACKAGE}/{PROTO.name}",
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")
    return sorted((out / PACKAGE).glob("converter_pb2*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="root of the tree to write (default: the repository)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
