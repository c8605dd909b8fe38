"""The persistence block of models.yaml and its Python API build the same config."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuft_project.model_config import ConfigError, PersistenceConfig, parse_config


def config_with(tiny_model_dir: Path, persistence: object) -> dict:
    return {
        "supported_models": [{"model_name": "m", "model_path": str(tiny_model_dir), "max_model_len": 64}],
        "persistence": persistence,
    }


def test_yaml_block_and_python_api_agree(tiny_model_dir: Path) -> None:
    redis = PersistenceConfig.from_redis_url("redis://10.0.0.5:6379/2", namespace="prod")
    parsed = parse_config(config_with(tiny_model_dir, redis.as_dict()), tiny_model_dir.parent).persistence
    assert parsed == redis
    assert parsed == parse_config(config_with(tiny_model_dir, {
        "mode": "redis_url", "redis_url": "redis://10.0.0.5:6379/2", "namespace": "prod"}), tiny_model_dir).persistence
    disabled = parse_config(config_with(tiny_model_dir, {"mode": "disabled"}), tiny_model_dir).persistence
    assert disabled == PersistenceConfig.disabled() == PersistenceConfig()


@pytest.mark.parametrize("block, message", [
    ({"mode": "redis_url"}, "needs redis_url"),
    ({"mode": "sqlite"}, "unknown mode"),
    ({"mode": "disabled", "ttl": 3}, "unknown key"),
])
def test_bad_persistence_blocks_are_errors(tiny_model_dir: Path, block: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(config_with(tiny_model_dir, block), tiny_model_dir)
