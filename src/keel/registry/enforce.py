"""A model card's constraints, enforced on the request path before any provider is called.

Input length is estimated, not tokenized: providers tokenize differently, and a tokenizer per
model would cost more than the check is worth. The estimate is OpenAI's rule of thumb (four
characters a token) plus a few tokens of framing per message, so it errs on the side of
letting borderline requests through to the provider, which has the last word.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from keel.errors import InvalidRequestError, RequestTooLargeError
from keel.registry.view import ResolvedModel
from keel.schemas import (
    AudioPart,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FilePart,
    ImagePart,
)

__all__ = ["enforce_card_limits", "estimate_input_tokens"]

_TOKENS_PER_MESSAGE = 4
_MODALITY_OF_PART: dict[type[BaseModel], str] = {
    ImagePart: "image",
    AudioPart: "audio",
    FilePart: "file",
}


def estimate_input_tokens(request: BaseModel) -> int:
    if isinstance(request, ChatCompletionRequest):
        characters = sum(len(message.text()) for message in request.messages)
        return math.ceil(characters / 4) + _TOKENS_PER_MESSAGE * len(request.messages)
    if isinstance(request, CompletionRequest):
        token_prompts = request.token_prompts()
        if token_prompts is not None:  # token ids: the count is exact
            return max(len(ids) for ids in token_prompts)
        return max(math.ceil(len(prompt) / 4) for prompt in request.prompts())
    if isinstance(request, EmbeddingRequest):
        texts = request.texts()
        if texts is None:  # token ids: the count is exact
            ids = request.input
            return len(ids) if not ids or isinstance(ids[0], int) else max(map(len, ids))  # type: ignore[arg-type]
        return max(math.ceil(len(text) / 4) for text in texts)
    return 0


def enforce_card_limits(model: ResolvedModel, request: BaseModel) -> None:
    limits = model.limits
    where = f"{model.name}@{model.version}"
    if limits.rejected_modalities and isinstance(request, ChatCompletionRequest):
        for message in request.messages:
            if isinstance(message.content, list):
                for part in message.content:
                    modality = _MODALITY_OF_PART.get(type(part))
                    if modality in limits.rejected_modalities:
                        raise InvalidRequestError(
                            f"{where} does not accept {modality} input (its model card "
                            f"rejects {', '.join(sorted(limits.rejected_modalities))})",
                            param="messages",
                            code="modality_not_allowed",
                        )
    if limits.max_input_tokens is not None:
        estimated = estimate_input_tokens(request)
        if estimated > limits.max_input_tokens:
            raise RequestTooLargeError(
                f"the input is about {estimated} tokens; {where} accepts at most "
                f"{limits.max_input_tokens} (its model card's max input length)",
                code="max_input_tokens_exceeded",
            )
    if limits.max_output_tokens is not None:
        asked = getattr(request, "max_completion_tokens", None) or getattr(
            request, "max_tokens", None
        )
        if asked is not None and asked > limits.max_output_tokens:
            raise InvalidRequestError(
                f"max_tokens={asked} is over {where}'s limit of {limits.max_output_tokens} "
                "output tokens",
                param="max_tokens",
                code="max_output_tokens_exceeded",
            )
