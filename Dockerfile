# The conversion service: `docker build -t convert . && docker run -p 50051:50051 -v convert-data:/data convert`
# (add `--gpus all` for CUDA; without a GPU the same image converts and benchmarks on the CPU).
# CUDA runtime base: torch's wheels bring their own CUDA and cuDNN libraries, the base brings the driver hooks.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv bubblewrap \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY convert convert
COPY server server
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 convert \
    && mkdir /data && chown convert /data

ENV PATH=/opt/venv/bin:$PATH \
    CONVERT_DATA_DIR=/data
# Job records, uploads and artifacts: keep them across container restarts.
VOLUME /data
USER convert
EXPOSE 50051

# The token comes from the environment (docker run -e CONVERT_AUTH_TOKEN=...), never from the image: listening on
# 0.0.0.0, the server refuses to start without one. The health check probes the health port (--port + 1), which no
# client can exhaust.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "server.health_probe", "--port", "50052"]
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "50051", "--data-dir", "/data", "--workers", "1"]
