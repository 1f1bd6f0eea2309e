"""Token authentication (metadata `authorization: Bearer TOKEN`) and TLS credentials."""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

__all__ = ["METADATA_KEY", "TokenAuth", "call_metadata", "channel_credentials", "server_credentials"]

METADATA_KEY = "authorization"
_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)  # probes (Docker, Kubernetes) carry no token


class TokenAuth(grpc.ServerInterceptor):
    """Refuse every call but the health check that lacks the server's token, with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(_OPEN_PREFIXES):
            return continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata).get(METADATA_KEY, "")
        if hmac.compare_digest(given.encode(), self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        return None if handler is None else _refusal(handler, "no token" if not given else "a wrong token")


def _refusal(handler: grpc.RpcMethodHandler, what: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind (unary or streaming) as `handler` that refuses the call at once."""

    def refuse(_request, context: grpc.ServicerContext):
        context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            f"the call carries {what}: pass the server's token (--auth-token, or the CONVERT_AUTH_TOKEN environment "
            "variable)",
        )

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])


def channel_credentials(ca: Path | None) -> grpc.ChannelCredentials:
    """TLS that trusts `ca` (a PEM file), or the system's roots when None."""
    return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes() if ca else None)


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return ((METADATA_KEY, f"Bearer {token}"),) if token else ()
