"""TuFT's public Python API: what users may import (everything else is internal).

    from tuft.persistence import PersistenceConfig
    from tuft.config import ModelConfig, TuftConfig, load_config

The server itself is started with the ``tuft`` command (``tuft --help``).
Importing this package loads neither Django nor torch.
"""

from tuft.config import ConfigError, ModelConfig, TuftConfig, load_config
from tuft.persistence import PersistenceConfig

__all__ = ["ConfigError", "ModelConfig", "PersistenceConfig", "TuftConfig", "load_config", "__version__"]
__version__ = "0.1.0"
