"""Persistence settings (the ``persistence:`` block of models.yaml), as in TuFT's original API.

    from tuft.persistence import PersistenceConfig

    PersistenceConfig.disabled()                                  # mode: disabled (default)
    PersistenceConfig.from_redis_url("redis://localhost:6379/0")  # mode: redis_url, namespace "tuft"

``config.as_dict()`` is the YAML block that parses back to the same config.
"""

from tuft_project.model_config import PersistenceConfig

__all__ = ["PersistenceConfig"]
