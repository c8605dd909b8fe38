"""models.yaml as Python objects: read one, or build one and write it.

    import yaml
    from tuft.config import ModelConfig, TuftConfig, load_config
    from tuft.persistence import PersistenceConfig

    config = TuftConfig(
        models=[ModelConfig(model_name="Qwen/Qwen3-8B", model_path="/data/Qwen3-8B", max_model_len=32768)],
        persistence=PersistenceConfig.from_redis_url("redis://localhost:6379/0"),
    )
    Path("models.yaml").write_text(yaml.safe_dump(config.as_dict(), sort_keys=False))
    assert load_config("models.yaml") == config   # the server reads the same file (tuft --model-config)

``load_config`` checks what the server checks at start-up (unknown keys, model
directories without config.json) and raises ``ConfigError``.
"""

from engine.types import BaseModelSpec as ModelConfig
from tuft_project.model_config import ConfigError, TuftConfig, load_config

__all__ = ["ConfigError", "ModelConfig", "TuftConfig", "load_config"]
