"""The worker process that runs one job (`python -m server.worker MEMORY_MB`), and its event protocol."""

__all__: list[str] = []
