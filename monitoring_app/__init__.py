"""Operations view of a TuFT deployment: Prometheus ``/metrics``, ``/api/v1/healthz`` and log context."""
