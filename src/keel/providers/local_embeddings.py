"""Local sentence-transformers embedding models: the bundled all-MiniLM-L6-v2 and any other
sentence-transformers model directory.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from keel.errors import InvalidRequestError, UnsupportedParameterError
from keel.providers._bundled import bundled_embedding_model_path
from keel.providers._model_files import LoadFailure, model_not_loadable
from keel.providers._worker import ModelWorker
from keel.providers.base import Provider
from keel.schemas import EmbeddingRequest

if TYPE_CHECKING:
    import aiohttp
    from sentence_transformers import SentenceTransformer

    from keel.config import DeploymentConfig

__all__ = ["SentenceTransformersProvider"]


class SentenceTransformersProvider(Provider):
    name: ClassVar[str] = "sentence_transformers"
    known_options: ClassVar[frozenset[str] | None] = frozenset()
    is_local = True
    supports_chat = False
    supports_embeddings = True

    def __init__(self, config: DeploymentConfig, http: aiohttp.ClientSession) -> None:
        super().__init__(config, http)
        self._model: SentenceTransformer | None = None
        self._worker = ModelWorker(config.id)
        self._model_path = config.model_path or bundled_embedding_model_path()
        self._load_failure = LoadFailure()

    @property
    def model_path(self) -> Path:
        return self._model_path

    def unready_reason(self) -> str | None:
        if self._model is not None:
            return None
        if not self._model_path.is_dir():
            return f"model directory not found: {self._model_path}"
        return self._load_failure.reason(self._model_path)

    async def start(self) -> None:
        await self._worker.run(self._load)

    def _load(self) -> SentenceTransformer:
        if self._model is None:
            reason = self.unready_reason()
            if reason is not None:
                raise model_not_loadable(self.config.id, reason)
            # The model is on disk; never let the hub client reach for the network.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            try:
                self._model = SentenceTransformer(str(self._model_path), device="cpu")
            except (ValueError, RuntimeError, OSError) as exc:
                # A model the runtime cannot load is this deployment's failure, not Keel's.
                reason = f"the model could not be loaded ({type(exc).__name__})"
                self._load_failure.note(self._model_path, reason)
                raise model_not_loadable(self.config.id, reason) from None
        return self._model

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        texts = request.texts()
        if texts is None:
            raise InvalidRequestError(
                f"model {self.config.id!r} takes text input, not token ids", param="input"
            )

        def encode() -> tuple[Any, int]:
            model = self._load()
            dimension = model.get_embedding_dimension()
            if request.dimensions is not None and request.dimensions != dimension:
                raise UnsupportedParameterError(
                    f"model {self.config.id!r} produces {dimension}-dimensional embeddings; "
                    f"dimensions={request.dimensions} is not available",
                    param="dimensions",
                )
            token_count = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
            vectors = model.encode(texts, convert_to_numpy=True, show_progress_bar=False)
            return vectors, token_count

        vectors, token_count = await self._worker.run(encode)
        data = []
        for index, vector in enumerate(vectors):
            embedding: Any
            if request.encoding_format == "base64":
                embedding = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            else:
                embedding = vector.tolist()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return {
            "object": "list",
            "data": data,
            "model": self.config.id,
            "usage": {"prompt_tokens": token_count, "total_tokens": token_count},
        }

    async def aclose(self) -> None:
        self._worker.shutdown()
