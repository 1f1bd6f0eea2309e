"""Exit 0 when the server reports SERVING on grpc.health.v1, else 1: the container's health check.

python -m server.health_probe [--host 127.0.0.1] [--port 50051] [--tls-ca PEM] [--timeout 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.auth import channel_credentials
from server.config import DEFAULT_PORT

__all__ = ["main"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--tls-ca", type=Path, help="the server speaks TLS with a certificate signed by this CA")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default: 3)")
    args = parser.parse_args()
    address = f"{args.host}:{args.port}"
    if args.tls_ca:
        channel = grpc.secure_channel(address, channel_credentials(args.tls_ca))
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"{address}: {e.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{address}: {status}", file=sys.stderr)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
