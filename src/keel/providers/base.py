"""The provider seam: one class per provider, from Keel's request to an OpenAI-format response.

A provider translates in both directions and nothing else: no retries, routing, accounting or
caching (those live in the gateway and routing layers). Capabilities are class attributes so the
gateway can refuse what a provider can't do before spending a network round trip.

Contract for streams: `chat_stream` yields OpenAI `chat.completion.chunk` dicts and, whenever the
provider reports usage, ends with one chunk whose `choices` is empty and whose `usage` is set. The
gateway decides whether the client sees that chunk (`stream_options.include_usage`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from keel.errors import InvalidRequestError, UnsupportedParameterError
from keel.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)

if TYPE_CHECKING:
    import aiohttp

    from keel.config import DeploymentConfig

__all__ = ["COMMON_CHAT_PARAMS", "Provider"]

# Parameters every chat provider maps in some way.
COMMON_CHAT_PARAMS: frozenset[str] = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "user",
        "metadata",
    }
)


class Provider:
    """Base class for providers. Subclasses set `name` and implement the calls they support."""

    name: ClassVar[str]
    is_local: ClassVar[bool] = False
    supports_chat: ClassVar[bool] = True
    supports_completions: ClassVar[bool] = False  # native legacy /v1/completions
    supports_embeddings: ClassVar[bool] = False
    # None means "forward every parameter" (OpenAI-compatible servers judge for themselves).
    chat_params: ClassVar[frozenset[str] | None] = COMMON_CHAT_PARAMS
    required_config: ClassVar[tuple[str, ...]] = ()
    # The keys a deployment's `options` may hold; any other is a configuration error (with a
    # suggestion) when set. None accepts any key.
    known_options: ClassVar[frozenset[str] | None] = None
    # Client headers the provider's deployments pass on unless configured otherwise.
    default_forwarded_headers: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: DeploymentConfig, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.http = http

    @property
    def upstream_model(self) -> str:
        return self.config.upstream_model

    @property
    def forwarded_headers(self) -> frozenset[str]:
        """The client headers this deployment passes on (`forward_headers` in its config)."""
        configured = self.config.forward_headers
        if configured is None:
            return self.default_forwarded_headers
        return frozenset(configured)

    def check_chat_request(self, request: ChatCompletionRequest) -> None:
        """Refuse, by name, a parameter this provider cannot honour."""
        if self.chat_params is None:
            return
        for param in request.set_params():
            if param not in self.chat_params:
                raise UnsupportedParameterError(
                    f"parameter {param!r} is not supported by provider {self.name!r} "
                    f"(model {self.config.id!r})",
                    param=param,
                )

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        raise InvalidRequestError(f"model {self.config.id!r} does not support chat completions")

    def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        raise InvalidRequestError(f"model {self.config.id!r} does not support streaming")

    async def complete(self, request: CompletionRequest) -> dict[str, Any]:
        raise InvalidRequestError(f"model {self.config.id!r} does not support text completions")

    def complete_stream(self, request: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        raise InvalidRequestError(f"model {self.config.id!r} does not support text completions")

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        raise InvalidRequestError(f"model {self.config.id!r} does not support embeddings")

    async def start(self) -> None:
        """Load or connect whatever the provider needs; called once before serving."""

    def ready(self) -> bool:
        """True when the provider can serve (its model is loaded or loadable)."""
        return self.unready_reason() is None

    def unready_reason(self) -> str | None:
        """Why the provider cannot serve (a model file missing or unloadable), or None."""
        return None

    async def aclose(self) -> None:
        """Release what `start` acquired."""
