"""The conversion service over gRPC: `convert serve` / `python -m server`, and `ConvertClient` for scripts."""
