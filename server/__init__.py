"""The conversion service over gRPC: `convert serve` / `python -m server`, and `ConvertClient` for scripts."""

__all__: list[str] = []
