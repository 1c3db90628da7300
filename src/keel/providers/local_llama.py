"""Local GGUF models through llama-cpp-python: the bundled SmolLM2-135M-Instruct and any other GGUF.

Generation runs in the model's own worker thread (see `_worker`), never on the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from keel.errors import (
    ConfigError,
    ContextWindowExceededError,
    InvalidRequestError,
    UnsupportedParameterError,
    UpstreamUnavailableError,
)
from keel.providers._bundled import bundled_chat_model_path
from keel.providers._openai_format import usage, usage_chunk
from keel.providers._worker import ModelWorker
from keel.providers.base import Provider
from keel.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
)

if TYPE_CHECKING:
    import aiohttp
    from llama_cpp import Llama

    from keel.config import DeploymentConfig

__all__ = ["LlamaCppProvider"]

_SAMPLING_PARAMS = (
    "temperature",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
)


class LlamaCppProvider(Provider):
    name: ClassVar[str] = "llama_cpp"
    is_local = True
    supports_completions = True
    chat_params = frozenset(
        {
            *_SAMPLING_PARAMS,
            "max_tokens",
            "max_completion_tokens",
            "stop",
            "stream",
            "stream_options",
            "response_format",
            "logprobs",
            "top_logprobs",
            "user",
            "metadata",
        }
    )

    def __init__(self, config: DeploymentConfig, http: aiohttp.ClientSession) -> None:
        super().__init__(config, http)
        self._llama: Llama | None = None
        self._worker = ModelWorker(config.id)
        self._model_path = config.model_path or bundled_chat_model_path()

    @property
    def model_path(self) -> Path:
        return self._model_path

    def ready(self) -> bool:
        return self._llama is not None or self._model_path.is_file()

    async def start(self) -> None:
        if not self._model_path.is_file():
            raise ConfigError(f"model {self.config.id!r}: GGUF file not found: {self._model_path}")
        await self._worker.run(self._load)

    def _load(self) -> Llama:
        # Runs in the worker thread, so the first request after a lazy start waits in line too.
        if self._llama is None:
            if not self._model_path.is_file():
                raise UpstreamUnavailableError(
                    f"model {self.config.id!r}: GGUF file not found: {self._model_path}"
                )
            from llama_cpp import Llama

            self._llama = Llama(
                model_path=str(self._model_path),
                n_ctx=self.config.n_ctx,
                n_threads=self.config.n_threads,
                verbose=False,
            )
        return self._llama

    def _chat_arguments(self, request: ChatCompletionRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "messages": [
                message.model_dump(exclude_none=True, include={"role", "content", "name"})
                for message in request.messages
            ],
            "max_tokens": request.output_token_limit(),
            "stop": request.stop_list() or None,
        }
        for param in _SAMPLING_PARAMS:
            value = getattr(request, param)
            if value is not None:
                arguments[param] = value
        if request.response_format is not None and request.response_format.type != "text":
            fmt: dict[str, Any] = {"type": "json_object"}
            if request.response_format.json_schema and request.response_format.json_schema.schema_:
                fmt["schema"] = request.response_format.json_schema.schema_
            arguments["response_format"] = fmt
        if request.logprobs:
            arguments["logprobs"] = True
            arguments["top_logprobs"] = request.top_logprobs
        for message in arguments["messages"]:
            if isinstance(message.get("content"), list):
                # Only text parts can reach a text-only model; anything else is refused.
                parts = message["content"]
                if any(part.get("type") != "text" for part in parts):
                    raise InvalidRequestError(
                        f"model {self.config.id!r} accepts text only", param="messages"
                    )
                message["content"] = "".join(part["text"] for part in parts)
        return arguments

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        arguments = self._chat_arguments(request)

        def generate() -> ChatCompletion:
            llama = self._load()
            try:
                result: ChatCompletion = llama.create_chat_completion(**arguments)  # type: ignore[assignment]
            except ValueError as exc:
                raise _context_error(self.config.id, exc) from exc
            return result

        response = await self._worker.run(generate)
        response["model"] = self.config.id
        return response

    def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        arguments = self._chat_arguments(request)
        return self._stream(lambda llama: llama.create_chat_completion(stream=True, **arguments))

    def _completion_arguments(self, request: CompletionRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "stop": ([request.stop] if isinstance(request.stop, str) else request.stop) or None,
            "echo": bool(request.echo),
            "suffix": request.suffix,
        }
        for param in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
            value = getattr(request, param)
            if value is not None:
                arguments[param] = value
        if request.logprobs is not None:
            arguments["logprobs"] = request.logprobs
        return arguments

    async def complete(self, request: CompletionRequest) -> dict[str, Any]:
        _one_choice(request)
        arguments = self._completion_arguments(request)
        prompts = request.prompts()

        def generate() -> list[dict[str, Any]]:
            llama = self._load()
            try:
                results: list[dict[str, Any]] = [
                    llama.create_completion(prompt, **arguments)  # type: ignore[misc]
                    for prompt in prompts
                ]
                return results
            except ValueError as exc:
                raise _context_error(self.config.id, exc) from exc

        results = await self._worker.run(generate)
        first = results[0]
        choices = []
        prompt_tokens = completion_tokens = 0
        for index, result in enumerate(results):
            choice = dict(result["choices"][0])
            choice["index"] = index
            choices.append(choice)
            prompt_tokens += result["usage"]["prompt_tokens"]
            completion_tokens += result["usage"]["completion_tokens"]
        return {
            "id": first["id"],
            "object": "text_completion",
            "created": first["created"],
            "model": self.config.id,
            "choices": choices,
            "usage": usage(prompt_tokens, completion_tokens),
        }

    def complete_stream(self, request: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        _one_choice(request)
        prompts = request.prompts()
        if len(prompts) != 1:
            raise InvalidRequestError("streaming takes a single prompt", param="prompt")
        arguments = self._completion_arguments(request)
        return self._stream(
            lambda llama: llama.create_completion(prompts[0], stream=True, **arguments)
        )

    async def _stream(self, start: Any) -> AsyncIterator[dict[str, Any]]:
        """Relay the worker's chunks, then a usage chunk (llama.cpp streams carry none)."""
        model_id = self.config.id
        counts = {"completion": 0, "prompt": 0}
        last: dict[str, Any] = {}

        def produce() -> Iterator[dict[str, Any]]:
            llama = self._load()
            try:
                cut_by_length = False
                for chunk in start(llama):
                    if _carries_token(chunk):
                        counts["completion"] += 1
                    if any(c.get("finish_reason") == "length" for c in chunk["choices"]):
                        cut_by_length = True
                    yield chunk
            except ValueError as exc:
                raise _context_error(model_id, exc) from exc
            # llama.cpp reports no split, but the context holds the prompt and every generated
            # token it evaluated: all of them, except the last when the limit stopped it.
            evaluated = counts["completion"] - (1 if cut_by_length else 0)
            counts["prompt"] = max(llama.n_tokens - evaluated, 0)

        async for chunk in self._worker.stream(produce):
            chunk["model"] = model_id
            last = chunk
            yield chunk
        if last:
            yield usage_chunk(
                completion_id=last["id"],
                model=model_id,
                usage=usage(counts["prompt"], counts["completion"]),
                created=last["created"],
            ) | {"object": last["object"]}

    async def aclose(self) -> None:
        self._worker.shutdown()


def _one_choice(request: CompletionRequest) -> None:
    if request.n is not None and request.n > 1:
        raise UnsupportedParameterError(
            f"model {request.model!r} generates one choice per prompt; n={request.n} is not "
            "supported",
            param="n",
        )


def _carries_token(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices", []):
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


def _context_error(model_id: str, exc: ValueError) -> Exception:
    text = str(exc)
    if "context window" in text or "exceed" in text:
        return ContextWindowExceededError(f"model {model_id!r}: {text}")
    return InvalidRequestError(f"model {model_id!r}: {text}")
