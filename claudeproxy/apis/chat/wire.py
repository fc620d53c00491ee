"""OpenAI Chat Completions types: the request we send, the answers we read.

No I/O. ``ChatRequest.to_dict()`` is the exact upstream body. The parsers
``parse_chat_response`` and ``parse_chat_chunk`` are tolerant by design:
OpenAI-compatible servers disagree on which fields exist, so a missing or
wrongly typed field reads as absent instead of failing (PROTOCOL.md 2 and 3.4).
Reasoning is read from every field providers use for it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Optional, Tuple, Union

from ...counts import count_or_none, token_count

Content = Union[str, List[Dict[str, Any]], None]

@dataclasses.dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    # Gemini wants the thought_signature it sent echoed on the call.
    thought_signature: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        if self.thought_signature:
            out["extra_content"] = {"google": {"thought_signature": self.thought_signature}}
        return out


@dataclasses.dataclass(frozen=True)
class ChatMessage:
    role: str
    content: Content = None
    tool_calls: Tuple[ToolCall, ...] = ()
    tool_call_id: Optional[str] = None
    # Reasoning echoed back to providers that require it (DeepSeek, vLLM, OpenRouter).
    reasoning_fields: Tuple[str, ...] = ()  # the fields it goes in, each with the same text
    reasoning: Optional[str] = None
    prefix: bool = False
    # Provider state restored from a proxy signature (OpenRouter reasoning_details).
    extra: Tuple[Tuple[str, Any], ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"role": self.role}
        if self.content is not None or self.role == "assistant":
            out["content"] = self.content
        if self.tool_calls:
            out["tool_calls"] = [tc.to_dict() for tc in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.reasoning is not None:
            for field in self.reasoning_fields:
                out[field] = self.reasoning
        if self.prefix:
            out["prefix"] = True
        out.update(self.extra)
        return out


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: Tuple[ChatMessage, ...]
    max_tokens: Optional[int] = None
    max_tokens_field: str = "max_tokens"
    stream: bool = False
    stream_usage: bool = True
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    stop: Tuple[str, ...] = ()
    tools: Tuple[Dict[str, Any], ...] = ()
    tool_choice: Union[str, Dict[str, Any], None] = None
    parallel_tool_calls: Optional[bool] = None
    user: Optional[str] = None
    user_field: str = "user"  # or safety_identifier (OpenAI's)
    response_format: Optional[Dict[str, Any]] = None
    reasoning_effort: Optional[str] = None
    # Provider-specific top-level fields (reasoning, thinking, chat_template_kwargs...).
    extra: Tuple[Tuple[str, Any], ...] = ()
    # The session's prompt-cache routing key, sent as ``cache_key_field`` (prompt_cache_key,
    # or OpenRouter's session_id).
    cache_key: Optional[str] = None
    cache_key_field: str = "prompt_cache_key"

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"model": self.model, "messages": [m.to_dict() for m in self.messages]}
        if self.max_tokens is not None:
            out[self.max_tokens_field] = self.max_tokens
        optional = (
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("top_k", self.top_k),
            ("stop", list(self.stop) if self.stop else None),
            ("tools", list(self.tools) if self.tools else None),
            ("tool_choice", self.tool_choice),
            ("parallel_tool_calls", self.parallel_tool_calls),
            (self.user_field, self.user),
            ("response_format", self.response_format),
            ("reasoning_effort", self.reasoning_effort),
            (self.cache_key_field, self.cache_key),
        )
        out.update((k, v) for k, v in optional if v is not None)
        out.update(self.extra)
        if self.stream:
            out["stream"] = True
            if self.stream_usage:
                out["stream_options"] = {"include_usage": True}
        return out


# --------------------------------------------------------------------------
# What comes back.


@dataclasses.dataclass(frozen=True)
class ChatUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0  # reasoning included, as OpenAI and Anthropic count output (see _output_tokens)
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class ToolCallDelta:
    """One tool call (whole, or a stream fragment). Any field may be missing."""

    index: Optional[int] = None
    id: str = ""
    name: str = ""
    arguments: Optional[str] = None
    # Provider state to echo on the next turn (Gemini thought_signature).
    thought_signature: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ChatChoice:
    """``choices[0]``: its ``message`` (responses) or ``delta`` (chunks)."""

    content: str = ""
    reasoning: str = ""
    refusal: str = ""
    tool_calls: Tuple[ToolCallDelta, ...] = ()
    finish_reason: Optional[str] = None
    # The stop string a server says it matched (vLLM stop_reason, SGLang matched_stop).
    matched_stop: Optional[str] = None
    # OpenRouter's reasoning_details array, carried in the thinking signature.
    reasoning_details: Optional[List[Any]] = None


@dataclasses.dataclass(frozen=True)
class ChatResponse:
    """A ChatCompletion or a ChatCompletionChunk; ``error`` is set for error objects."""

    id: str = ""
    choice: Optional[ChatChoice] = None
    usage: Optional[ChatUsage] = None
    error: Optional[Dict[str, Any]] = None
    # OpenRouter's provider failure mid-answer, in the choice (finish_reason "error"): a stream's
    # content in the same chunk still goes out before it.
    choice_error: Optional[Dict[str, Any]] = None


def _as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_usage(raw: Any) -> Optional[ChatUsage]:
    """Usage from an OpenAI ``usage`` object, with the DeepSeek and detail variants."""
    if not isinstance(raw, dict) or count_or_none(raw.get("prompt_tokens")) is None:
        # {}, nulls or strings say nothing: the usage is not known, which is not 0 tokens. Nor does a
        # usage without the prompt's count ({"completion_tokens": 20}): the prompt was not 0 tokens,
        # and the client sizes its context by it (the estimate stands in, as for no usage at all).
        return None
    prompt_details = raw.get("prompt_tokens_details") if isinstance(raw.get("prompt_tokens_details"), dict) else {}
    completion_details = raw.get("completion_tokens_details")
    # A count that may be unreported: null or a wrong type is None, which is not 0 (2.5).
    reasoning = count_or_none(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else None
    # DeepSeek says prompt_cache_hit_tokens; Moonshot's context caching (moonshot-v1) a top-level cached_tokens.
    cached = (token_count(prompt_details.get("cached_tokens")) or token_count(raw.get("prompt_cache_hit_tokens"))
              or token_count(raw.get("cached_tokens")))
    prompt = token_count(raw.get("prompt_tokens"))
    written = token_count(prompt_details.get("cache_write_tokens"))
    return ChatUsage(
        prompt_tokens=prompt,
        completion_tokens=_output_tokens(prompt, token_count(raw.get("completion_tokens")), reasoning,
                                         count_or_none(raw.get("total_tokens")), cached_apart=bool(cached or written)),
        cached_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=reasoning,
    )


def _output_tokens(prompt: int, completion: int, reasoning: Optional[int], total: Optional[int],
                   cached_apart: bool = False) -> int:
    """The output count with the reasoning in it: Anthropic's output_tokens includes thinking.

    OpenAI's completion_tokens includes the reasoning already (total = prompt + completion).
    Gemini's OpenAI-compatible endpoint leaves it out (total = prompt + completion + reasoning),
    which made the output smaller than the thinking inside it: then the reasoning is added. Only
    when the total says so; without a total nothing tells the two apart, and OpenAI's shape stands.
    Where no reasoning count comes at all and the total is more than prompt and completion (Gemini
    behind gateways that pass its thoughts on in the total alone), the rest is that output -- but not
    where cached input is counted (``cached_apart``): some gateways add it to the total outside
    prompt_tokens, and 8,000 cached tokens were then 8,000 tokens of output.
    """
    if reasoning and total is not None and total == prompt + completion + reasoning:
        return completion + reasoning
    if reasoning is None and not cached_apart and total is not None and total > prompt + completion:
        return total - prompt
    return completion


def _text_of(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_as_str(p.get("text")) for p in content if isinstance(p, dict) and p.get("type") in (None, "text"))
    return ""


def _thinking_parts(content: Any) -> str:
    """The thinking in a content list: Mistral's reasoning models (Magistral) answer, whole and in
    stream deltas alike, with [{"type": "thinking", "thinking": [{"type": "text", "text": ...}]},
    {"type": "text", "text": ...}] (docs.mistral.ai, Reasoning; ThinkChunk in its OpenAPI spec)."""
    if not isinstance(content, list):
        return ""
    parts = (p.get("thinking") for p in content if isinstance(p, dict) and p.get("type") == "thinking")
    return "".join(inner if isinstance(inner, str) else _text_of(inner) for inner in parts)


def _reasoning_details_text(details: Any) -> str:
    if not isinstance(details, list):
        return ""
    parts = []
    for item in details:
        if isinstance(item, dict) and item.get("type") != "reasoning.encrypted":
            parts.append(_as_str(item.get("text")) or _as_str(item.get("summary")))
    return "".join(parts)


def _reasoning_of(msg: Dict[str, Any]) -> str:
    return (
        _as_str(msg.get("reasoning_content"))
        or _as_str(msg.get("reasoning"))
        or _reasoning_details_text(msg.get("reasoning_details"))
        or _thinking_parts(msg.get("content"))
    )


def _arguments_of(function: Dict[str, Any]) -> Optional[str]:
    args = function.get("arguments")
    if args is None or isinstance(args, str):
        return args
    # Some gateways send the arguments already decoded.
    return json.dumps(args, ensure_ascii=False)


def _thought_signature(raw: Dict[str, Any]) -> Optional[str]:
    extra = raw.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) and sig else None


def _parse_tool_call(raw: Any) -> Optional[ToolCallDelta]:
    if not isinstance(raw, dict) or raw.get("type") not in (None, "function"):
        return None
    function = raw.get("function") if isinstance(raw.get("function"), dict) else {}
    index = raw.get("index")
    return ToolCallDelta(
        index=index if isinstance(index, int) and not isinstance(index, bool) else None,
        id=_as_str(raw.get("id")),
        name=_as_str(function.get("name")),
        arguments=_arguments_of(function),
        thought_signature=_thought_signature(raw),
    )


def _tool_calls_of(msg: Dict[str, Any]) -> Tuple[ToolCallDelta, ...]:
    raw_calls = msg.get("tool_calls")
    calls = [_parse_tool_call(tc) for tc in raw_calls] if isinstance(raw_calls, list) else []
    legacy = msg.get("function_call")
    if isinstance(legacy, dict):
        calls.append(_parse_tool_call({"function": legacy}))
    return tuple(tc for tc in calls if tc is not None)


def _parse_choice(raw: Any, body_key: str) -> Optional[ChatChoice]:
    if not isinstance(raw, dict):
        return None
    msg = raw.get(body_key)
    if not isinstance(msg, dict):
        msg = raw.get("message") if isinstance(raw.get("message"), dict) else {}
    # SGLang matched_stop, vLLM stop_reason; either may be null or a token id (int).
    matched = next((m for m in (raw.get("matched_stop"), raw.get("stop_reason")) if isinstance(m, str)), None)
    details = msg.get("reasoning_details")
    return ChatChoice(
        content=_text_of(msg.get("content")),
        reasoning=_reasoning_of(msg),
        refusal=_as_str(msg.get("refusal")),
        tool_calls=_tool_calls_of(msg),
        finish_reason=raw.get("finish_reason") if isinstance(raw.get("finish_reason"), str) else None,
        matched_stop=matched,
        reasoning_details=details if isinstance(details, list) and details else None,
    )


def _first_choice_raw(raw: Dict[str, Any]) -> Any:
    """The choice a body or chunk answers with, as it came (None when there is none)."""
    choices = raw.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    # Only one choice is ever requested; Gemini once numbered it 1, so take the
    # first element unless several are present.
    first = choices[0]
    if len(choices) > 1:
        first = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), first)
    return first


def _error_of(raw: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    err = raw.get("error")
    if isinstance(err, dict):
        return err
    if isinstance(err, str) and err:
        return {"message": err}
    return None


def _usage_of(raw: Dict[str, Any], choice: Any) -> Optional[ChatUsage]:
    """The top-level usage; else older Groq streams' ``x_groq.usage``; else Moonshot/Kimi's, which
    streams put inside the final choice (next to its finish_reason)."""
    usage = parse_usage(raw.get("usage"))
    if usage is None and isinstance(raw.get("x_groq"), dict):
        usage = parse_usage(raw["x_groq"].get("usage"))
    if usage is None and isinstance(choice, dict):
        usage = parse_usage(choice.get("usage"))
    return usage


def reports_usage(raw: Any) -> bool:
    """Does a ChatCompletion report its usage, where ``_usage_of`` looks for it?"""
    return usage_of(raw) is not None


def usage_of(raw: Any) -> Optional[ChatUsage]:
    """A ChatCompletion's usage, where ``_usage_of`` looks for it; None without one."""
    return _usage_of(raw, _first_choice_raw(raw)) if isinstance(raw, dict) else None


def _parse(raw: Dict[str, Any], body_key: str) -> ChatResponse:
    choice = _first_choice_raw(raw)
    return ChatResponse(
        id=_as_str(raw.get("id")),
        choice=_parse_choice(choice, body_key),
        usage=_usage_of(raw, choice),
        error=_error_of(raw),
        choice_error=_error_of(choice) if isinstance(choice, dict) else None,
    )


def parse_chat_response(raw: Any) -> ChatResponse:
    """A non-streaming ChatCompletion body (already JSON-decoded)."""
    if not isinstance(raw, dict):
        return ChatResponse(error={"message": "upstream response is not a JSON object"})
    return _parse(raw, "message")


def parse_chat_chunk(raw: Any) -> ChatResponse:
    """One streamed ChatCompletionChunk (already JSON-decoded)."""
    if not isinstance(raw, dict):
        return ChatResponse()
    return _parse(raw, "delta")
