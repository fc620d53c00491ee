"""OpenAI ``ChatResponse`` -> Anthropic Messages response (PROTOCOL.md section 2).

Pure: ids come in as arguments or from an id factory the caller passes. The
helpers here (stop reason, usage) and those of ``apis/toolargs.py`` (a call's
arguments) and ``apis/names.py`` (ids) are shared with the stream translator, so
both paths give the same answer for the same upstream output.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Set, Tuple

from ...counts import openai_usage
from ...errors import ProxyError, UpstreamHTTPError, UpstreamUnavailable, error_from_object
from ...ids import first_free
from ...signatures import encode_signature
from ..stops import StopFinder
from ..names import client_tool_id, message_id, own_tool_id
from ..toolargs import cut_short, normalize_arguments, said_done_but_cut
from .wire import (
    ChatChoice,
    ChatResponse,
    ChatUsage,
    ToolCallDelta,
    parse_chat_response,
)

IdFactory = Callable[[], str]


# --------------------------------------------------------------------------
# Stop reason and usage (2.4, 2.5).


def match_stop_sequence(
    text: str, matched: Optional[str], stop_sequences: Tuple[str, ...]
) -> Tuple[Optional[str], str]:
    """(matched stop string or None, text with a trailing stop string removed)."""
    if matched and matched in stop_sequences:
        return matched, text
    # Longest first: with "END" and "THE END" both matching, removing only "END" leaves "THE ".
    for seq in sorted(stop_sequences, key=len, reverse=True):
        if seq and text.endswith(seq):
            return seq, text[: -len(seq)]
    return None, text


def stop_reason_for(finish_reason: Optional[str], has_tool_use: bool, refusal: bool, stop_match: Optional[str]) -> str:
    """Anthropic ``stop_reason`` from the upstream outcome; first rule that applies wins."""
    if finish_reason in ("length", "max_tokens", "model_length"):  # Mistral's: the model's context ran out
        return "max_tokens"
    if has_tool_use:
        return "tool_use"
    if finish_reason in ("tool_calls", "function_call"):
        return "end_turn"
    if finish_reason == "content_filter" or refusal:
        return "refusal"
    if stop_match is not None and finish_reason in ("stop", None):
        return "stop_sequence"
    return "end_turn"


# Finish reasons that say the upstream ran out of capacity mid-answer, not that the answer is done:
# DeepSeek's "insufficient_system_resource" (its finish_reason enum: "the inference was interrupted
# for lack of system resources"). The client must not take the cut answer for a whole one.
_OVERLOAD_FINISH_REASONS = frozenset({"insufficient_system_resource"})


def overload_error(finish_reason: Optional[str], secrets: Tuple[str, ...] = (),
                   choice_error: Optional[Dict[str, Any]] = None) -> Optional[ProxyError]:
    """The failure a finish reason (or the choice's own error object) reports, or None for any
    other finish reason: an overload (529 overloaded_error: the proxy and the SDKs retry it, a route
    falls back), or "error" (OpenRouter's and Mistral's: the generation failed; what came is no
    whole answer), in the choice's error object's words where it has one."""
    if finish_reason == "error" or choice_error is not None:
        return error_from_object(choice_error or {"message": "upstream reported an error during generation"}, secrets)
    if finish_reason not in _OVERLOAD_FINISH_REASONS:
        return None
    return UpstreamHTTPError(f"upstream overloaded: it stopped generating mid-answer ({finish_reason})", status=529)


def usage_from(usage: Optional[ChatUsage]) -> Dict[str, Any]:
    """Anthropic usage: ``input_tokens`` excludes the cached part OpenAI counts in."""
    if usage is None:
        usage = ChatUsage()
    return openai_usage(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens,
                        usage.reasoning_tokens)


# --------------------------------------------------------------------------
# Content blocks (2.2).


def split_think_tags(content: str) -> Tuple[str, str]:
    """(reasoning, text) for content that opens with ``<think>`` (servers without a reasoning parser)."""
    stripped = content.lstrip()
    if not stripped.startswith("<think>"):
        return "", content
    inner, sep, rest = stripped[len("<think>"):].partition("</think>")
    if not sep:
        return inner.strip(), ""
    return inner.strip(), rest.lstrip()


def thinking_block(text: str, dialect_name: str, state: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": encode_signature(dialect_name, state)}


def provider_state(choice: ChatChoice, ids: Dict[int, str]) -> Optional[Dict[str, Any]]:
    """State to round-trip in the signature: reasoning_details, Gemini thought signatures."""
    state: Dict[str, Any] = {}
    if choice.reasoning_details:
        state["reasoning_details"] = choice.reasoning_details
    sigs = {ids[i]: tc.thought_signature for i, tc in enumerate(choice.tool_calls) if tc.thought_signature and i in ids}
    if sigs:
        state["ts"] = sigs
    return state or None


def tool_use_block(tool_id: str, name: str, arguments: Optional[str], tool_names: Dict[str, str],
                   cut: bool = False) -> Tuple[Dict[str, Any], Optional[str]]:
    obj, warning = normalize_arguments(arguments, cut)
    return {"type": "tool_use", "id": tool_id, "name": tool_names.get(name, name), "input": obj}, warning


def unique_tool_ids(calls: Tuple[ToolCallDelta, ...], new_id: IdFactory,
                    history: FrozenSet[str] = frozenset(), secrets: Tuple[str, ...] = ()) -> Dict[int, str]:
    """Block id for each usable call (by position): upstream id, deduplicated, or a fresh one; in the
    form Anthropic's ids take (``client_tool_id``). ``history``: the conversation's ids so far
    (``tool_use_ids``), which an answer's must not repeat either."""
    ids: Dict[int, str] = {}
    taken = {call.id for call in calls if call.name and call.id}
    used: Set[str] = set()
    for i, call in enumerate(calls):
        if not call.name:
            continue
        base = own_tool_id(call.id, secrets) or "toolu_" + new_id()
        # A suffix must not collide with another call's real id ("c", "c_2", "c").
        block_id = first_free(base, lambda c: c in used or (c != base and c in taken) or client_tool_id(c) in history,
                              used | history)
        used.add(block_id)
        ids[i] = client_tool_id(block_id)
    return ids


# Finish reasons of an answer cut mid-generation, maybe inside a call's arguments (its last).
CUT_FINISH_REASONS = ("length", "max_tokens", "content_filter")


def cut_where_said_whole(choice: ChatChoice) -> Tuple[ChatChoice, Optional[str]]:
    """A choice whose last call's arguments stop inside a string, or where no value could end
    (``cut_short``), though the upstream called it done, as the cut answer it is: finish_reason
    "length", so the call keeps its whole members only and the client hears max_tokens. Closed up
    by the repair instead, a Write ran with half a file and no error."""
    calls = [call for call in choice.tool_calls if call.name]
    if choice.finish_reason in CUT_FINISH_REASONS or not calls or not cut_short(calls[-1].arguments):
        return choice, None
    warning = said_done_but_cut(f"finish_reason {choice.finish_reason!r}", calls[-1].name)
    return dataclasses.replace(choice, finish_reason="length"), warning


def content_blocks(
    choice: ChatChoice,
    *,
    tool_names: Dict[str, str],
    dialect_name: str,
    think_tags: bool,
    new_id: IdFactory,
    thinking: bool = True,
    history: FrozenSet[str] = frozenset(),
    secrets: Tuple[str, ...] = (),
) -> Tuple[List[Dict[str, Any]], List[str]]:
    """thinking, text, refusal, tool_use blocks in that order, plus warnings.

    ``thinking``: the client asked for it (``wants_thinking``); else the upstream's reasoning is left
    out, and only provider state the next turn must carry back comes, in an empty thinking block."""
    reasoning, text = choice.reasoning, choice.content
    if think_tags and not reasoning:
        reasoning, text = split_think_tags(text)
    ids = unique_tool_ids(choice.tool_calls, new_id, history, secrets)
    state = provider_state(choice, ids)
    blocks: List[Dict[str, Any]] = []
    if not thinking:
        reasoning = ""
    if reasoning or state:
        blocks.append(thinking_block(reasoning, dialect_name, state))
    blocks.extend({"type": "text", "text": t} for t in (text, choice.refusal) if t)
    warnings = []
    # Only the last call can have been cut: the ones before it were whole when the next began.
    cut_at = max(ids) if ids and choice.finish_reason in CUT_FINISH_REASONS else None
    for i, call in enumerate(choice.tool_calls):
        if i in ids:
            block, warning = tool_use_block(ids[i], call.name, call.arguments, tool_names, cut=i == cut_at)
            blocks.append(block)
            warnings.extend([warning] if warning else [])
    return blocks, warnings


def apply_stop_sequence(blocks: List[Dict[str, Any]], choice: ChatChoice, stop_sequences: Tuple[str, ...]) -> Optional[str]:
    """The matched stop string (2.4 rule 5); a stop string ending the text is cut from it."""
    if choice.finish_reason not in ("stop", None):
        return None
    if not (blocks and blocks[-1]["type"] == "text"):
        return match_stop_sequence("", choice.matched_stop, stop_sequences)[0]
    stop_match, blocks[-1]["text"] = match_stop_sequence(blocks[-1]["text"], choice.matched_stop, stop_sequences)
    if not blocks[-1]["text"]:
        blocks.pop()  # the text was only the stop string: no empty block (FIELD-NOTES 12)
    return stop_match


def cut_at_stop(choice: ChatChoice, stops: Tuple[str, ...], think_tags: bool) -> Tuple[ChatChoice, Optional[str]]:
    """The choice ended at the first stop string the proxy matches itself, and that string.

    Only the answer text is searched (not reasoning, not a refusal). What came after the
    stop string (the rest of the text, a refusal, tool calls) was never part of the answer.
    """
    if not stops:
        return choice, None
    reasoning, text = choice.reasoning, choice.content
    if think_tags and not reasoning:
        reasoning, text = split_think_tags(text)  # the <think> part is reasoning, not text
    hit = StopFinder(stops).first(text)
    if hit is None:
        return choice, None
    start, seq = hit
    cut = dataclasses.replace(choice, reasoning=reasoning, content=text[:start], refusal="", tool_calls=(),
                              finish_reason="stop", matched_stop=None)
    return cut, seq


def to_messages_response(
    chat: ChatResponse,
    *,
    model: str,
    new_id: IdFactory,
    tool_names: Optional[Dict[str, str]] = None,
    stop_sequences: Tuple[str, ...] = (),
    dialect_name: str = "generic",
    think_tags: bool = False,
    local_stops: Tuple[str, ...] = (),
    thinking: bool = True,
    history: FrozenSet[str] = frozenset(),
    secrets: Tuple[str, ...] = (),
) -> Tuple[Dict[str, Any], List[str]]:
    """The Anthropic ``Message`` for a ChatCompletion that has a choice, plus warnings.

    ``local_stops``: the stop strings the upstream was not sent; the text ends at the first.
    """
    choice, local_match = cut_at_stop(chat.choice or ChatChoice(), local_stops, think_tags)
    choice, cut_warning = cut_where_said_whole(choice)
    blocks, warnings = content_blocks(
        choice, tool_names=tool_names or {}, dialect_name=dialect_name,
        think_tags=think_tags and local_match is None, new_id=new_id,  # a cut choice is split already
        thinking=thinking, history=history, secrets=secrets,
    )
    has_tools = any(b["type"] == "tool_use" for b in blocks)
    stop_match = local_match
    if not (has_tools or choice.refusal or local_match):  # rules 2 and 4 win: leave the text as generated
        stop_match = apply_stop_sequence(blocks, choice, stop_sequences)
    reason = stop_reason_for(choice.finish_reason, has_tools, bool(choice.refusal), stop_match)
    warnings += [cut_warning] if cut_warning else []
    message = {
        "id": message_id(chat.id, new_id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": reason,
        "stop_sequence": stop_match if reason == "stop_sequence" else None,
        "usage": usage_from(chat.usage),
    }
    return message, warnings


def _malformed_answer(obj: Any, choice: ChatChoice) -> Optional[str]:
    """What makes an answer no answer, though the reader took what it could: a ``content`` that is
    no text (``5``), or a finish that says a tool was called with no call that names one. Read as
    an empty answer, it was a 200 ``end_turn`` the client could not tell from a model that chose
    to say nothing."""
    choices = obj.get("choices") if isinstance(obj, dict) else None
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = first.get("message") if isinstance(first.get("message"), dict) else {}
    content = message.get("content")
    if content is not None and not isinstance(content, (str, list)):
        return f"its content is {type(content).__name__}, not text"
    return called_nothing(choice.finish_reason, any(call.name for call in choice.tool_calls),
                          bool(choice.content or choice.reasoning or choice.refusal))


def called_nothing(finish_reason: Optional[str], named_call: bool, said_something: bool) -> Optional[str]:
    """An answer that ended for a tool call it does not have, and holds nothing else."""
    if finish_reason in ("tool_calls", "function_call") and not named_call and not said_something:
        return f"finish_reason {finish_reason!r} without a tool call that has a name"
    return None


def message_from_body(
    obj: Any,
    *,
    model: str,
    new_id: IdFactory,
    tool_names: Optional[Dict[str, str]] = None,
    stop_sequences: Tuple[str, ...] = (),
    dialect_name: str = "generic",
    think_tags: bool = False,
    secrets: Tuple[str, ...] = (),
    local_stops: Tuple[str, ...] = (),
    thinking: bool = True,
    history: FrozenSet[str] = frozenset(),
) -> Tuple[Dict[str, Any], List[str]]:
    """The Anthropic message for a JSON body from the upstream; error objects and empty answers raise."""
    chat = parse_chat_response(obj)
    if chat.error is not None:
        raise error_from_object(chat.error, secrets)
    if chat.choice is None:
        raise UpstreamUnavailable("upstream response has no choices")
    overload = overload_error(chat.choice.finish_reason, secrets, chat.choice_error)
    if overload is not None:
        raise overload
    malformed = _malformed_answer(obj, chat.choice)
    if malformed is not None:
        raise UpstreamUnavailable(f"upstream answer is malformed: {malformed}")
    return to_messages_response(
        chat, model=model, new_id=new_id, tool_names=tool_names, stop_sequences=stop_sequences,
        dialect_name=dialect_name, think_tags=think_tags, local_stops=local_stops, thinking=thinking,
        history=history, secrets=secrets,
    )
