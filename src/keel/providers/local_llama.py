"""Local GGUF models through llama-cpp-python: the bundled SmolLM2-135M-Instruct and any other GGUF.

Generation runs in the model's own worker thread (see `_worker`), never on the event loop. A
request is one job in that queue, all of its choices (`n`) included.

Log-probabilities are noted as tokens are sampled (see `_llama_logprobs`), so the model is never
created with llama-cpp-python's `logits_all` (n_ctx x vocabulary floats in memory, about 400 MB
for the bundled model, and the output layer computed for every prompt token).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from keel.errors import (
    ConfigError,
    ContextWindowExceededError,
    InvalidRequestError,
    UnsupportedParameterError,
)
from keel.providers._bundled import bundled_chat_model_path
from keel.providers._llama_logprobs import SampleLog, recording_llama_class
from keel.providers._llama_messages import check_no_tool_use, template_messages
from keel.providers._model_files import LoadFailure, model_not_loadable
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
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
)

# What the bundled model's card recommends (temperature, top_p), and a mild repetition penalty
# without which a model this small often loops until max_tokens. Used where a request leaves
# them unset; any GGUF deployment sets its own in `options`.
BUNDLED_SAMPLING_DEFAULTS: dict[str, float] = {
    "temperature": 0.2,
    "top_p": 0.9,
    "repeat_penalty": 1.1,
}
_SAMPLING_OPTIONS = frozenset(BUNDLED_SAMPLING_DEFAULTS)

# One choice's generation: the llama in, llama.cpp's result or chunks out.
_Generation = Callable[["Llama"], Any]


class LlamaCppProvider(Provider):
    name: ClassVar[str] = "llama_cpp"
    known_options: ClassVar[frozenset[str] | None] = _SAMPLING_OPTIONS
    is_local = True
    supports_completions = True
    chat_params = frozenset(
        {
            *_SAMPLING_PARAMS,
            "seed",
            "n",
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
            # Accepted while they ask for no tool call (see `check_no_tool_use`).
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "functions",
            "function_call",
        }
    )

    def __init__(self, config: DeploymentConfig, http: aiohttp.ClientSession) -> None:
        super().__init__(config, http)
        self._llama: Llama | None = None
        self._sample_log = SampleLog()
        self._worker = ModelWorker(config.id)
        self._model_path = config.model_path or bundled_chat_model_path()
        self._load_failure = LoadFailure()
        self._sampling_defaults = _sampling_defaults(config)

    @property
    def model_path(self) -> Path:
        return self._model_path

    def unready_reason(self) -> str | None:
        if self._llama is not None:
            return None
        if not self._model_path.is_file():
            return f"GGUF file not found: {self._model_path}"
        return self._load_failure.reason(self._model_path)

    async def start(self) -> None:
        await self._worker.run(self._load)

    def check_chat_request(self, request: ChatCompletionRequest) -> None:
        super().check_chat_request(request)
        check_no_tool_use(request, self.name, self.config.id)
        if request.top_logprobs is not None and not request.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs: true", param="top_logprobs")
        template_messages(request.messages, self.config.id)

    def _load(self) -> Llama:
        # Runs in the worker thread, so the first request after a lazy start waits in line too.
        if self._llama is None:
            # A file that is missing, or failed to load and has not changed since, fails the
            # same way every time: refused at once (and never retried, see `model_not_loadable`)
            # rather than loaded again on every request.
            reason = self.unready_reason()
            if reason is not None:
                raise model_not_loadable(self.config.id, reason)
            try:
                self._llama = recording_llama_class()(
                    model_path=str(self._model_path),
                    n_ctx=self.config.n_ctx,
                    n_threads=self.config.n_threads,
                    verbose=False,
                    sample_log=self._sample_log,
                )
            except (ValueError, RuntimeError, OSError) as exc:
                # The model runtime is this deployment's upstream: a file it cannot load is
                # the deployment's failure (fallbacks apply), not the request's or Keel's.
                reason = f"the GGUF file could not be loaded ({type(exc).__name__})"
                self._load_failure.note(self._model_path, reason)
                raise model_not_loadable(self.config.id, reason) from None
        return self._llama

    def _chat_arguments(self, request: ChatCompletionRequest) -> dict[str, Any]:
        # Also checked by `check_chat_request`; repeated so no caller can skip it.
        self.check_chat_request(request)
        arguments: dict[str, Any] = {
            "messages": template_messages(request.messages, self.config.id),
            "max_tokens": request.output_token_limit(),
            "stop": request.stop_list() or None,
        }
        for param in _SAMPLING_PARAMS:
            value = getattr(request, param)
            if value is not None:
                arguments[param] = value
        for param, value in self._sampling_defaults.items():
            arguments.setdefault(param, value)
        if request.response_format is not None and request.response_format.type != "text":
            fmt: dict[str, Any] = {"type": "json_object"}
            if request.response_format.json_schema and request.response_format.json_schema.schema_:
                fmt["schema"] = request.response_format.json_schema.schema_
            arguments["response_format"] = fmt
        return arguments

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        arguments = self._chat_arguments(request)
        log, wanted, top = self._sample_log, bool(request.logprobs), request.top_logprobs or 0

        def generate(llama: Llama, seed: int) -> Any:
            with log.recording(wanted, top):
                result: Any = llama.create_chat_completion(seed=seed, **arguments)
                choice = result["choices"][0]
                content = log.content_for(choice["message"].get("content") or "")
                choice["logprobs"] = None if content is None else _chat_logprobs(content)
            return result

        generations = [_bind(generate, seed) for seed in _seeds(request.seed, request.n)]
        results = await self._worker.run(self._generate_all, generations)
        choices = []
        for index, result in enumerate(results):
            choice = dict(result["choices"][0])
            choice["index"] = index
            choices.append(choice)
        return self._combined(results, choices, object_type="chat.completion")

    def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        arguments = self._chat_arguments(request)
        log, wanted, top = self._sample_log, bool(request.logprobs), request.top_logprobs or 0

        def generate(llama: Llama, seed: int) -> Iterator[dict[str, Any]]:
            # Runs in the worker, where the samples are noted: each chunk takes the entries of
            # the tokens its text shows.
            with log.recording(wanted, top):
                chunks: Iterator[dict[str, Any]] = llama.create_chat_completion(  # type: ignore[assignment]
                    stream=True, seed=seed, **arguments
                )
                for chunk in chunks:
                    for choice in chunk["choices"]:
                        text = (choice.get("delta") or {}).get("content") or ""
                        content = log.content_for(text) if text else None
                        choice["logprobs"] = _chat_logprobs(content) if content else None
                    yield chunk

        generations = [_bind(generate, seed) for seed in _seeds(request.seed, request.n)]
        return self._stream(generations)

    def _completion_arguments(self, request: CompletionRequest) -> dict[str, Any]:
        if request.max_tokens == 0:
            # OpenAI reads 0 as "generate nothing"; llama.cpp as "no limit", which would run to
            # the end of the context.
            raise UnsupportedParameterError(
                f"max_tokens: 0 is not supported by model {self.config.id!r}; send at least 1",
                param="max_tokens",
            )
        arguments: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "stop": ([request.stop] if isinstance(request.stop, str) else request.stop) or None,
            "echo": bool(request.echo),
            "suffix": request.suffix,
        }
        for param in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
            value = getattr(request, param)
            if value is not None:
                arguments[param] = value
        for param, value in self._sampling_defaults.items():
            arguments.setdefault(param, value)
        return arguments

    def _text_generation(
        self, request: CompletionRequest, *, stream: bool
    ) -> Callable[[Llama, tuple[str, int]], Any]:
        """One `/v1/completions` choice: `(prompt, seed)` in, llama.cpp's result or chunks out,
        with log-probabilities in OpenAI's legacy shape."""
        if request.logprobs is not None and request.echo:
            # llama-cpp-python's own log-probabilities of an echoed prompt are misaligned by one
            # token, and Keel notes only sampled tokens.
            raise UnsupportedParameterError(
                f"parameter 'echo' with 'logprobs' is not supported by provider {self.name!r} "
                f"(model {self.config.id!r}): log-probabilities cover generated tokens only",
                param="echo",
            )
        arguments = self._completion_arguments(request)
        log, noted, top = self._sample_log, request.logprobs is not None, request.logprobs or 0

        def logprobs(choice: dict[str, Any], shown: str) -> dict[str, Any] | None:
            if not noted:
                return None
            entries = log.content_for(choice.get("text") or "")
            return _text_logprobs(entries, shown) if entries else None

        def generate(llama: Llama, job: tuple[str, int]) -> Any:
            prompt, seed = job
            with log.recording(noted, top):
                result: Any = llama.create_completion(prompt, seed=seed, **arguments)
                result["choices"][0]["logprobs"] = logprobs(result["choices"][0], prompt)
            return result

        def generate_stream(llama: Llama, job: tuple[str, int]) -> Iterator[dict[str, Any]]:
            prompt, seed = job
            shown = prompt
            with log.recording(noted, top):
                chunks: Iterator[dict[str, Any]] = llama.create_completion(  # type: ignore[assignment]
                    prompt, stream=True, seed=seed, **arguments
                )
                for chunk in chunks:
                    for choice in chunk["choices"]:
                        choice["logprobs"] = logprobs(choice, shown)
                        shown += choice.get("text") or ""
                    yield chunk

        return generate_stream if stream else generate

    async def complete(self, request: CompletionRequest) -> dict[str, Any]:
        generate = self._text_generation(request, stream=False)
        seeds = _seeds(request.seed, request.n)
        # OpenAI's order: the choices of the first prompt, then those of the second, ...
        generations = [
            _bind(generate, (prompt, seed)) for prompt in request.prompts() for seed in seeds
        ]
        results = await self._worker.run(self._generate_all, generations)
        choices = []
        for index, result in enumerate(results):
            choice = dict(result["choices"][0])
            choice["index"] = index
            choices.append(choice)
        # The prompt is evaluated once per prompt, not once per choice.
        body = self._combined(results, choices, object_type="text_completion")
        body["usage"] = usage(
            sum(result["usage"]["prompt_tokens"] for result in results[:: len(seeds)]),
            body["usage"]["completion_tokens"],
        )
        return body

    def complete_stream(self, request: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        prompts = request.prompts()
        if len(prompts) != 1:
            raise InvalidRequestError("streaming takes a single prompt", param="prompt")
        generate = self._text_generation(request, stream=True)
        generations = [
            _bind(generate, (prompts[0], seed)) for seed in _seeds(request.seed, request.n)
        ]
        return self._stream(generations)

    def _generate_all(self, generations: list[_Generation]) -> list[Any]:
        """Every choice of one request, in the worker, one after the other."""
        llama = self._load()
        with _llama_errors(self.config.id):
            return [generate(llama) for generate in generations]

    def _combined(
        self, results: list[dict[str, Any]], choices: list[dict[str, Any]], *, object_type: str
    ) -> dict[str, Any]:
        first = results[0]
        return {
            "id": first["id"],
            "object": object_type,
            "created": first["created"],
            "model": self.config.id,
            "choices": choices,
            # One prompt evaluated for all the choices, as OpenAI counts it.
            "usage": usage(
                first["usage"]["prompt_tokens"],
                sum(result["usage"]["completion_tokens"] for result in results),
            ),
        }

    async def _stream(
        self,
        generations: list[_Generation],
    ) -> AsyncIterator[dict[str, Any]]:
        """Relay each choice's chunks in turn, then a usage chunk (llama.cpp streams carry none)."""
        model_id = self.config.id
        counts = {"completion": 0, "prompt": 0}
        first: dict[str, Any] = {}

        def produce() -> Iterator[tuple[int, dict[str, Any]]]:
            llama, log = self._load(), self._sample_log
            with _llama_errors(model_id):
                for index, generate in enumerate(generations):
                    log.sampled, finish = 0, None
                    for chunk in generate(llama):
                        for choice in chunk["choices"]:
                            finish = choice.get("finish_reason") or finish
                        yield index, chunk
                    # Counted as llama.cpp counts when not streaming: every sampled token but an
                    # end-of-turn token (which shows no text).
                    ended = finish == "stop" and not llama.detokenize([log.last_token])
                    counts["completion"] += log.sampled - (1 if ended and log.sampled else 0)
                    if index == 0:
                        # The context holds the prompt and every sampled token but the last,
                        # which the generation stopped at before evaluating it.
                        counts["prompt"] = max(llama.n_tokens - max(log.sampled - 1, 0), 0)

        async for index, chunk in self._worker.stream(produce):
            if not first:
                first = chunk
            # One stream, one id: each choice is a separate llama.cpp call with its own.
            chunk["id"], chunk["created"], chunk["model"] = first["id"], first["created"], model_id
            for choice in chunk["choices"]:
                choice["index"] = index
            yield chunk
        if first:
            yield usage_chunk(
                completion_id=first["id"],
                model=model_id,
                usage=usage(counts["prompt"], counts["completion"]),
                created=first["created"],
            ) | {"object": first["object"]}

    async def aclose(self) -> None:
        self._worker.shutdown()


def _sampling_defaults(config: DeploymentConfig) -> dict[str, float]:
    """What a request leaves unset is sampled with: the deployment's `options`, else (for the
    bundled file) the bundled model's defaults, else llama-cpp-python's own."""
    defaults = dict(BUNDLED_SAMPLING_DEFAULTS) if config.model_path is None else {}
    for key in sorted(_SAMPLING_OPTIONS & set(config.options)):
        value = config.options[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"options.{key}: must be a number, 0 or more")
        defaults[key] = float(value)
    return defaults


def _bind(generate: Callable[[Llama, Any], Any], value: Any) -> _Generation:
    return lambda llama: generate(llama, value)


def _seeds(seed: int | None, n: int | None) -> list[int]:
    """One seed per choice. A request's seed makes its choices reproducible (and different from
    each other); without one every choice gets a fresh random seed, since llama-cpp-python would
    otherwise derive it from the previous request's."""
    count = n or 1
    if seed is None:
        return [secrets.randbits(32) for _ in range(count)]
    return [(seed + index) % 2**32 for index in range(count)]


def _chat_logprobs(content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"content": content, "refusal": None}


def _text_logprobs(entries: list[dict[str, Any]], shown: str) -> dict[str, Any]:
    """Noted log-probabilities in the legacy shape; offsets count characters from the start of
    the prompt (`shown` is the text before these tokens)."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    shown_bytes = shown.encode()
    for entry in entries:
        offsets.append(len(shown_bytes.decode(errors="ignore")))
        shown_bytes += bytes(entry["bytes"])
        tokens.append(entry["token"])
        token_logprobs.append(entry["logprob"])
        # The legacy API lists the sampled token among the likeliest, even when it is not.
        likeliest = {a["token"]: a["logprob"] for a in entry["top_logprobs"]}
        likeliest.setdefault(entry["token"], entry["logprob"])
        top_logprobs.append(likeliest)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": offsets,
    }


@contextmanager
def _llama_errors(model_id: str) -> Iterator[None]:
    """llama-cpp-python's refusals as Keel's 400s: a prompt over the context window, and a chat
    template that cannot render the conversation (raised before any token is generated)."""
    from jinja2 import TemplateError

    try:
        yield
    except ValueError as exc:
        text = str(exc)
        if "context window" in text or "exceed" in text:
            raise ContextWindowExceededError(f"model {model_id!r}: {text}") from exc
        raise InvalidRequestError(f"model {model_id!r}: {text}") from exc
    except TemplateError as exc:
        raise InvalidRequestError(
            f"model {model_id!r}: its chat template cannot render this conversation: {exc}",
            param="messages",
        ) from exc
