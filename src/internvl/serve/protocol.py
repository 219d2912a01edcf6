"""The OpenAI chat-completions wire format: request models (validated with pydantic), response and streaming
chunk bodies, and the error body every 4xx carries.

Only the format lives here; what a request means for the model is `messages.py` and `prompting.py`.
Extensions over OpenAI, as other servers spell them: `max_dynamic_patch` (tiles per image, per request or
per `image_url`, like LMDeploy), `top_k` and `repetition_penalty` (like vLLM).

Validation is strict: a value of the wrong JSON type is refused, never coerced (`"n": "2"`, `max_tokens:
true`, `stream: 0`), numbers must be finite and in range, and text must be valid Unicode (JSON can spell a
lone UTF-16 surrogate, `"\ud800"`, which no encoder or tokenizer accepts).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..engine.sampling import MAX_REPETITION_PENALTY, MIN_REPETITION_PENALTY

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_STOP_LENGTH = 256  # characters per stop string (each decode step scans for them)


class APIError(Exception):
    """A request the server refuses: HTTP status plus an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---------------------------------------------------------------- requests

def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"the text holds a lone UTF-16 surrogate ({text[e.start]!r} at position {e.start}), "
                         "which is not valid Unicode") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class ImageURL(_Model):
    url: Text
    detail: Literal["auto", "low", "high"] | None = None  # "low" = one tile (the thumbnail)
    max_dynamic_patch: int | None = Field(None, ge=1)  # extension: tiles for this image


class TextPart(_Model):
    type: Literal["text"]
    text: Text


class ImagePart(_Model):
    type: Literal["image_url"]
    image_url: ImageURL

    @field_validator("image_url", mode="before")
    @classmethod
    def _plain_string(cls, v: Any) -> Any:  # some clients send the URL itself
        return {"url": v} if isinstance(v, str) else v


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[ContentPart] | None = None


class StreamOptions(_Model):
    include_usage: bool = False


class ChatCompletionRequest(_Model):
    model: Text | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1 - 16)  # + choice index stays a 64-bit int
    stop: Text | list[Text] | None = Field(None, validate_default=True)  # becomes a list
    n: int = Field(1, ge=1, le=16)
    max_dynamic_patch: int | None = Field(None, ge=1)
    # Accepted only at their no-op values, so a client is never silently given something it did not ask for.
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    tools: list | None = None
    response_format: dict | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [] if v is None else [v] if isinstance(v, str) else list(v)
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        if any(len(s) > MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"stop strings may be at most {MAX_STOP_LENGTH} characters long")
        return stops

    def unsupported(self) -> tuple[str, str] | None:
        """(param, reason) for the first feature asked for that this server does not implement."""
        if self.frequency_penalty:
            return "frequency_penalty", "frequency_penalty is not supported (use repetition_penalty)"
        if self.presence_penalty:
            return "presence_penalty", "presence_penalty is not supported (use repetition_penalty)"
        if self.logprobs:
            return "logprobs", "logprobs are not supported"
        if self.tools:
            return "tools", "tool calling is not supported"
        if self.response_format and self.response_format.get("type", "text") != "text":
            return "response_format", "only response_format {'type': 'text'} is supported"
        return None

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def parse_request(data: Any) -> ChatCompletionRequest:
    """Validate a decoded JSON body; a bad one raises APIError(400) naming the field and the problem."""
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        raise APIError(400, "invalid request: " + describe_validation(e), param=_param(e)) from None


def _loc(err: dict) -> str:
    """('messages', 0, 'content', <branch>, 1, <tag>, 'image_url', 'url') -> 'messages[0].content[1].image_url.url'
    (pydantic puts union branches and discriminator tags in the location; the client never wrote those)."""
    parts: list[str] = []
    for i, p in enumerate(err["loc"]):
        if isinstance(p, str) and (p == "str" or "[" in p):  # a union branch: 'list[...]', 'function-after[...]'
            continue
        if p in ("text", "image_url") and i and isinstance(err["loc"][i - 1], int) and i + 1 < len(err["loc"]):
            continue  # the discriminator tag, followed by the real field name
        parts.append(f"[{p}]" if isinstance(p, int) else f".{p}")
    return "".join(parts).lstrip(".")


def _relevant(e: ValidationError) -> list[dict]:
    """pydantic's errors, less noise: a `str | list` field fails on both branches, and the branch of the
    other type than the value's says nothing useful."""
    errs = [x for x in e.errors() if not (x["type"] == "string_type" and isinstance(x.get("input"), list))
            and not (x["type"] == "list_type" and isinstance(x.get("input"), str))]
    return errs or e.errors()


def _param(e: ValidationError) -> str | None:
    errs = _relevant(e)
    return (_loc(errs[0]) or None) if errs else None


def describe_validation(e: ValidationError, limit: int = 3) -> str:
    """pydantic's errors as 'field: problem' phrases."""
    errs = _relevant(e)
    msgs = []
    for err in errs[:limit]:
        where = _loc(err)
        msg = err["msg"].removeprefix("Value error, ")
        msgs.append(f"{where}: {msg}" if where else msg)
    more = len(errs) - limit
    return "; ".join(msgs) + (f" (and {more} more)" if more > 0 else "")


# ---------------------------------------------------------------- responses

def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(cid: str, model: str, answers: list[tuple[str, str]], prompt_tokens: int,
                    completion_tokens: int) -> dict:
    """A `chat.completion` object; `answers` holds (text, finish_reason) per choice."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": reason} for i, (text, reason) in enumerate(answers)],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk_body(cid: str, model: str, created: int, index: int | None, delta: dict | None = None,
               finish_reason: str | None = None, usage_: dict | None = None, with_usage: bool = False) -> dict:
    """A `chat.completion.chunk`; with index None, the usage-only last chunk (no choices)."""
    choices = [] if index is None else [{"index": index, "delta": delta or {}, "logprobs": None,
                                         "finish_reason": finish_reason}]
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if with_usage:
        body["usage"] = usage_
    return body


def model_list(name: str, max_len: int, max_tiles: int) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": int(time.time()),
                                        "owned_by": "internvl", "max_model_len": max_len,
                                        "max_dynamic_patch": max_tiles}]}
