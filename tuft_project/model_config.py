"""Reading models.yaml: the base models a server offers and its persistence mode.

    supported_models:
      - model_name: Qwen/Qwen3-8B        # the name clients ask for
        model_path: /data/Qwen3-8B       # a local Hugging Face checkpoint directory
        max_model_len: 32768
        tensor_parallel_size: 1
        max_lora_rank: 128               # optional
        tokenizer_id: Qwen/Qwen3-8B      # optional (default model_name): what clients load the tokenizer from
        sampler: auto                    # optional: auto | vllm | hf (default: $TUFT_DEFAULT_SAMPLER or auto)
        max_loras: 8                     # optional, vLLM: adapters decoded in one batch
        max_cpu_loras: 32                # optional, vLLM: adapters kept loaded (least recently used evicted)
        gpu_memory_utilization: 0.5      # optional, vLLM on GPU: its share of GPU memory
    persistence:                         # optional
      mode: disabled | redis_url
      redis_url: redis://127.0.0.1:6379/0
      namespace: tuft

Unknown keys are errors: configuration that silently does nothing is dangerous.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.sampler import SAMPLER_KINDS, VLLM_INSTALL_HINT, VLLM_PLUGIN_HINT, tuft_vllm_plugin_active, vllm_installed
from engine.types import BaseModelSpec

# The sampler of a model whose entry has no ``sampler:`` key. The test suite sets
# it to ``hf`` so that only the tests that ask for vLLM start a vLLM engine.
DEFAULT_SAMPLER_ENV = "TUFT_DEFAULT_SAMPLER"


class ConfigError(Exception):
    """models.yaml is missing, malformed or names something that does not exist."""


@dataclass(frozen=True)
class PersistenceConfig:
    mode: str = "disabled"  # "disabled" | "redis_url"
    redis_url: str | None = None
    namespace: str = "tuft"

    @classmethod
    def disabled(cls) -> "PersistenceConfig":
        return cls(mode="disabled")

    @classmethod
    def from_redis_url(cls, url: str, namespace: str = "tuft") -> "PersistenceConfig":
        return cls(mode="redis_url", redis_url=url, namespace=namespace)

    def as_dict(self) -> dict[str, str]:
        """The ``persistence:`` block of models.yaml that parses back to this config."""
        if self.mode == "disabled":
            return {"mode": "disabled"}
        return {"mode": self.mode, "redis_url": self.redis_url or "", "namespace": self.namespace}


@dataclass(frozen=True)
class TuftConfig:
    models: list[BaseModelSpec]
    persistence: PersistenceConfig = field(default_factory=PersistenceConfig)

    def as_dict(self) -> dict[str, Any]:
        """The models.yaml content that parses back to this config."""
        return {
            # Every BaseModelSpec field is a models.yaml key of the same name.
            "supported_models": [dataclasses.asdict(m) for m in self.models],
            "persistence": self.persistence.as_dict(),
        }

    def find_model(self, name_or_path: str) -> BaseModelSpec | None:
        """The base model configured under this name, or at this path (clients may use either)."""
        for spec in self.models:
            if name_or_path == spec.model_name:
                return spec
        for spec in self.models:
            if name_or_path and Path(name_or_path).expanduser() == Path(spec.model_path):
                return spec
        return None


_MODEL_KEYS = {"model_name", "model_path", "max_model_len", "tensor_parallel_size", "max_lora_rank", "tokenizer_id",
               "sampler", "max_loras", "max_cpu_loras", "gpu_memory_utilization"}
_PERSISTENCE_KEYS = {"mode", "redis_url", "namespace"}


def _check_keys(where: str, data: Any, allowed: set[str], required: set[str]) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping")
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")
    missing = required - set(data)
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(sorted(missing))}")


def parse_config(data: Any, base_dir: Path) -> TuftConfig:
    _check_keys("models.yaml", data, {"supported_models", "persistence"}, {"supported_models"})
    entries = data["supported_models"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError("models.yaml: supported_models must be a non-empty list")
    default_sampler = os.environ.get(DEFAULT_SAMPLER_ENV, "auto")
    if default_sampler not in SAMPLER_KINDS:
        raise ConfigError(f"{DEFAULT_SAMPLER_ENV}={default_sampler!r}: must be one of {', '.join(SAMPLER_KINDS)}")
    models = []
    for i, entry in enumerate(entries):
        where = f"models.yaml supported_models[{i}]"
        _check_keys(where, entry, _MODEL_KEYS, {"model_name", "model_path", "max_model_len"})
        path = Path(str(entry["model_path"])).expanduser()
        if not path.is_absolute():
            path = (base_dir / path).resolve()
        if not (path / "config.json").exists():
            raise ConfigError(f"{where}: model_path {path} is not a Hugging Face model directory (no config.json)")
        try:
            spec = BaseModelSpec(
                model_name=str(entry["model_name"]),
                model_path=str(path),
                max_model_len=int(entry["max_model_len"]),
                tensor_parallel_size=int(entry.get("tensor_parallel_size", 1)),
                max_lora_rank=int(entry.get("max_lora_rank", 128)),
                tokenizer_id=str(entry.get("tokenizer_id") or ""),  # "" = the model name
                sampler=str(entry.get("sampler", default_sampler)),
                max_loras=int(entry.get("max_loras", 8)),
                max_cpu_loras=int(entry.get("max_cpu_loras", 32)),
                gpu_memory_utilization=float(entry.get("gpu_memory_utilization", 0.5)),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if spec.max_model_len < 2 or spec.tensor_parallel_size < 1 or spec.max_lora_rank < 1:
            raise ConfigError(f"{where}: max_model_len, tensor_parallel_size and max_lora_rank must be positive")
        _check_sampler(where, spec)
        models.append(spec)
    names = [m.model_name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError("models.yaml: model_name values must be unique")
    persistence = PersistenceConfig()
    if "persistence" in data:
        p = data["persistence"]
        _check_keys("models.yaml persistence", p, _PERSISTENCE_KEYS, {"mode"})
        if p["mode"] == "disabled":
            persistence = PersistenceConfig.disabled()
        elif p["mode"] == "redis_url":
            if not p.get("redis_url"):
                raise ConfigError("models.yaml persistence: mode redis_url needs redis_url")
            persistence = PersistenceConfig.from_redis_url(str(p["redis_url"]), str(p.get("namespace", "tuft")))
        else:
            raise ConfigError(f"models.yaml persistence: unknown mode {p['mode']!r} (disabled or redis_url)")
    return TuftConfig(models=models, persistence=persistence)


def _check_sampler(where: str, spec: BaseModelSpec) -> None:
    if spec.sampler not in SAMPLER_KINDS:
        raise ConfigError(f"{where}: sampler must be one of {', '.join(SAMPLER_KINDS)}, got {spec.sampler!r}")
    if not 1 <= spec.max_loras <= spec.max_cpu_loras:
        raise ConfigError(f"{where}: need 1 <= max_loras <= max_cpu_loras")
    if not 0 < spec.gpu_memory_utilization <= 1:
        raise ConfigError(f"{where}: gpu_memory_utilization must be in (0, 1]")
    if spec.sampler == "vllm" and not vllm_installed():
        raise ConfigError(f"{where}: sampler: vllm but vLLM is not installed; {VLLM_INSTALL_HINT}")
    if spec.sampler == "vllm" and not tuft_vllm_plugin_active():
        # Checked on GPUs too (where the plugin changes nothing): the device is not known yet.
        raise ConfigError(f"{where}: sampler: vllm but {VLLM_PLUGIN_HINT}")


def load_config(path: str | Path) -> TuftConfig:
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"model config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    return parse_config(data, path.parent)
