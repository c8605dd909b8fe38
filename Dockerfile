# TuFT, CPU image: the quick start in a container (docs/docker.md).
#
#   docker build -t tuft:cpu .
#   docker run -p 8080:8080 -v tuft-data:/data tuft:cpu            # built-in model, prints a tml- key
#   docker run -p 8080:8080 -v /host/dir:/data tuft:cpu \
#       tuft --port 8080 --checkpoint-dir /data/checkpoints --model-config /data/models.yaml
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TUFT_HOME=/data \
    TUFT_HOST=0.0.0.0 \
    PORT=8080

WORKDIR /app

# Dependencies first, so this layer is rebuilt only when requirements.txt changes. torch comes
# from PyTorch's CPU index: PyPI's default build would add ~5 GB of CUDA libraries.
COPY requirements.txt ./
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install --no-cache-dir -r requirements.txt

COPY . .
# The editable install only adds the `tuft` command; templates and static files stay in /app.
RUN pip install --no-cache-dir --no-deps -e . \
 && useradd --create-home --uid 1000 tuft \
 && mkdir -p /data \
 && chown tuft:tuft /data

USER 1000:1000
VOLUME ["/data"]
EXPOSE 8080

# 503 (unhealthy) while the database, Redis or every worker is down; see docs/monitoring.md.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py"]

ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD []
