"""OpenAI Responses ``Response`` object -> Anthropic Messages response (RESPONSES.md sections 2, 6).

Pure: ids come from the id factory the caller passes. The helpers here (one
block per output item, stop reason, usage, error mapping) are shared with the
stream fold, so a streamed answer and a JSON answer give the same message.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from ...counts import count_or_none, openai_usage, token_count
from ...errors import ProxyError, error_from_object
from ...ids import first_free
from ...signatures import encode_signature
from ..names import client_tool_id, id_chars, message_id, own_tool_id, without_secrets
from ..toolargs import cut_short, normalize_arguments, said_done_but_cut
from ..stops import StopFinder
from . import API_NAME

IdFactory = Callable[[], str]
Block = Dict[str, Any]


# --------------------------------------------------------------------------
# Errors (RESPONSES.md 4): response.failed, the error event, error bodies.


def text_field(obj: Dict[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def error_for(err: Any, secrets: Tuple[str, ...] = (), default: str = "upstream response failed") -> ProxyError:
    """The client-facing error for a Responses error object (flat, or nested under ``error``).

    The string ``code`` picks the status, so ``context_length_exceeded`` is
    a 400 "prompt is too long" (Claude Code compacts on it) and a rate limit
    a 429; unknown codes are a 502 like any broken upstream.
    """
    if isinstance(err, dict) and isinstance(err.get("error"), dict):
        err = err["error"]
    err = err if isinstance(err, dict) else {}
    code = text_field(err, "code") or text_field(err, "type")
    message = text_field(err, "message") or (f"{default} ({code})" if code else default)
    # error_from_object reads the status from "code" and matches overflow codes in "type".
    # error_from_object adds x-should-retry: false for a code no retry gets past (insufficient_quota).
    return error_from_object({"message": message, "code": code or None, "type": code}, secrets)


def failure_of(obj: Dict[str, Any], secrets: Tuple[str, ...] = ()) -> Optional[ProxyError]:
    """The error a Response object stands for: ``status: failed``/``cancelled`` or an ``error``."""
    status = obj.get("status")
    err = obj.get("error")
    if isinstance(err, dict) and (status in ("failed", "cancelled", None) or not obj.get("output")):
        return error_for(err, secrets)
    if status in ("failed", "cancelled"):
        return error_for({}, secrets, default=f"upstream response {status}")
    return None


# --------------------------------------------------------------------------
# Blocks, one output item at a time.


def thinking_block(text: str, item_id: Any, blob: Any) -> Optional[Block]:
    """A reasoning item as a thinking block whose signature carries ``{id, encrypted_content}``.

    Emitted even with an empty summary so the blob survives the client round
    trip; a reasoning item with neither text nor blob has nothing to carry.
    """
    if not text and not blob:
        return None
    state = {"id": item_id if isinstance(item_id, str) else "", "encrypted_content": blob if isinstance(blob, str) else None}
    return {"type": "thinking", "thinking": text, "signature": encode_signature(API_NAME, state)}


def reasoning_text(item: Dict[str, Any]) -> str:
    """Summary parts (hosted models), then raw reasoning parts (gpt-oss-style servers), blank-line joined."""
    texts = [p.get("text") for p in _list(item.get("summary"))]
    texts += [p.get("text") for p in _list(item.get("content")) if p.get("type") == "reasoning_text"]
    return "\n\n".join(t for t in texts if isinstance(t, str) and t)


def citation(annotation: Any, text: str, secrets: Tuple[str, ...] = ()) -> Optional[Dict[str, Any]]:
    """A ``url_citation`` as an Anthropic ``web_search_result_location`` (cited_text: the span it marks;
    the call's ``secrets`` masked in the URL and title the upstream gave)."""
    if not isinstance(annotation, dict) or annotation.get("type") != "url_citation":
        return None
    start, end = annotation.get("start_index"), annotation.get("end_index")
    cited = text[start:end] if isinstance(start, int) and isinstance(end, int) else ""
    return {
        "type": "web_search_result_location",
        "url": without_secrets(text_field(annotation, "url"), secrets),
        "title": without_secrets(text_field(annotation, "title"), secrets),
        # Anthropic's opaque reference to the result, which the SDKs' types require: OpenAI gives none.
        "encrypted_index": "",
        "cited_text": cited,
    }


def text_block(text: str, annotations: Any, secrets: Tuple[str, ...] = ()) -> Optional[Block]:
    if not text:
        return None  # no empty text blocks (FIELD-NOTES 12)
    block: Block = {"type": "text", "text": text}
    cites = [c for c in (citation(a, text, secrets) for a in _list(annotations)) if c]
    if cites:
        block["citations"] = cites
    return block


def part_text(part: Dict[str, Any]) -> Tuple[str, bool]:
    """(text, is_refusal) of a message content part."""
    if part.get("type") == "refusal":
        return text_field(part, "refusal"), True
    if part.get("type") == "output_text":
        return text_field(part, "text"), False
    return "", False


def arguments_text(value: Any) -> str:
    """A call's ``arguments`` as the text the API defines them to be. A server that sends them as
    a JSON object (a wire variant) means that object: it is the input, not ``{}``."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else ""


def tool_input(arguments: Any, incomplete: bool = False) -> Dict[str, Any]:
    """The ``tool_use`` input for a call's arguments string.

    In an incomplete answer (the output limit, a content filter) arguments that are not
    whole JSON were cut mid-value: they give the members that were whole, as the SDKs make of
    the same stream, not a repair that would close the string and invent a value
    (``{"path":"a`` is not a call for file ``a``); the stop reason says the answer was cut.
    Arguments that closed their object, or turned invalid, were not cut: they give what
    ``normalize_arguments`` gives, as a stream of them does (``normalize_arguments``, ``cut``).
    """
    text = arguments_text(arguments) if arguments is not None else None
    obj, _ = normalize_arguments(text, cut=incomplete)
    return obj


def tool_use_block(item: Dict[str, Any], tool_names: Dict[str, str], new_id: IdFactory,
                   incomplete: bool = False, secrets: Tuple[str, ...] = ()) -> Block:
    """A function call as ``tool_use``: its ``call_id`` is the id the client echoes back (in Anthropic's
    id form: ``client_tool_id``; ``request.call_id`` turns it back)."""
    name = text_field(item, "name")
    obj = tool_input(item.get("arguments"), incomplete)
    tool_id = client_tool_id(own_tool_id(text_field(item, "call_id"), secrets)) or "toolu_" + new_id()
    return {"type": "tool_use", "id": tool_id, "name": tool_names.get(name, name), "input": obj}


def search_blocks(item: Dict[str, Any], new_id: IdFactory, secrets: Tuple[str, ...] = ()) -> List[Block]:
    """A ``web_search_call`` searching: ``server_tool_use`` + ``web_search_tool_result``.

    The sources carry URLs only (titles come with the text's citations);
    ``open_page``/``find`` actions have no Anthropic counterpart. The upstream's id and sources are
    the upstream's words, not the model's: the call's ``secrets`` are kept out of them.
    """
    if not is_search(item):
        return []
    action = item["action"] if isinstance(item.get("action"), dict) else {}
    queries = [q for q in _list(action.get("queries"), str) if q]
    query = text_field(action, "query") or (queries[0] if queries else "")
    tool_id = "srvtoolu_" + (id_chars(own_tool_id(text_field(item, "id"), secrets)) or new_id())
    content: Any = [
        # encrypted_content and page_age as Anthropic's results have them (the SDKs' types require
        # the one): OpenAI's sources carry neither.
        {"type": "web_search_result", "url": without_secrets(text_field(s, "url"), secrets),
         "title": without_secrets(text_field(s, "title"), secrets),
         "encrypted_content": "", "page_age": None}
        for s in _list(action.get("sources"))
        if text_field(s, "url")
    ]
    if item.get("status") == "failed":
        content = {"type": "web_search_tool_result_error", "error_code": "unavailable"}
    use = {"type": "server_tool_use", "id": tool_id, "name": "web_search", "input": {"query": query}}
    return [use, {"type": "web_search_tool_result", "tool_use_id": tool_id, "content": content}]


def is_search(item: Dict[str, Any]) -> bool:
    """A web search call that searched (an item without an action is an older server's search)."""
    action = item.get("action")
    return item.get("type") == "web_search_call" and (not isinstance(action, dict) or action.get("type", "search") == "search")


def searched(item: Dict[str, Any]) -> bool:
    """A search that counts in ``usage.server_tool_use.web_search_requests``: not a failed one,
    as Anthropic counts the searches that ran (the failed one still shows as an error block)."""
    return is_search(item) and item.get("status") != "failed"


def _list(value: Any, kind: type = dict) -> List[Any]:
    return [v for v in value if isinstance(v, kind)] if isinstance(value, list) else []


def item_blocks(item: Dict[str, Any], tool_names: Dict[str, str], new_id: IdFactory,
                incomplete: bool = False, thinking: bool = True, secrets: Tuple[str, ...] = ()
                ) -> Tuple[List[Block], bool]:
    """(blocks, refusal seen) for one output item; unknown hosted-tool items give none.

    ``incomplete``: the Response is (``tool_input``). ``thinking``: the client asked for it
    (``request.wants_thinking``); else a reasoning item (gpt-oss-style servers send their raw
    reasoning unasked) gives no block, as Anthropic returns none unasked."""
    kind = item.get("type")
    if kind == "reasoning" and not thinking:
        return [], False
    if kind == "reasoning":
        block = thinking_block(reasoning_text(item), item.get("id"), item.get("encrypted_content"))
        return ([block] if block else []), False
    if kind == "message":
        blocks, refusal = [], False
        for part in _list(item.get("content")):
            text, is_refusal = part_text(part)
            block = text_block(text, part.get("annotations"), secrets)
            blocks.extend([block] if block else [])
            refusal = refusal or (is_refusal and bool(text))
        return blocks, refusal
    if kind == "function_call":  # without a name no tool can answer it (PROTOCOL.md 2.2, as on Chat)
        return ([tool_use_block(item, tool_names, new_id, incomplete, secrets)] if text_field(item, "name") else []), False
    if kind == "web_search_call":
        return search_blocks(item, new_id, secrets), False
    return [], False


def unique_tool_ids(blocks: List[Block], history: FrozenSet[str] = frozenset()) -> None:
    """Two calls with one id would pair two results with one call: suffix the later ones, and one
    that repeats an id of the conversation so far (``tool_use_ids``)."""
    used = set(history)
    for block in blocks:
        if block["type"] != "tool_use":
            continue
        block["id"] = first_free(block["id"], used.__contains__, used)
        used.add(block["id"])


# --------------------------------------------------------------------------
# Stop reason and usage.


def stop_reason_for(status: Any, incomplete: Any, has_tool_use: bool, refusal: bool) -> str:
    """Anthropic ``stop_reason`` (RESPONSES.md 6); the first rule that applies wins."""
    reason = incomplete.get("reason") if isinstance(incomplete, dict) else None
    if status == "incomplete" and reason == "max_output_tokens":
        return "max_tokens"
    if status == "incomplete" and reason == "content_filter":
        return "refusal"
    if has_tool_use:
        return "tool_use"
    return "refusal" if refusal else "end_turn"


def _int(obj: Any, key: str) -> int:
    """A token count of a usage object, by the one rule (``counts.py``: a bad one counts 0)."""
    return token_count(obj.get(key)) if isinstance(obj, dict) else 0


def reports_usage(usage: Any) -> bool:
    """Does a Response's ``usage`` say what the prompt cost: an object with ``input_tokens`` a count?
    ``{}``, ``{"total_tokens": 150}``, Chat's names or ``{"output_tokens": 20}`` do not: the usage is
    not known (the client gets the estimate, the record no count), not a prompt of 0 tokens at $0."""
    return isinstance(usage, dict) and count_or_none(usage.get("input_tokens")) is not None


def usage_from(usage: Any, searches: int = 0) -> Dict[str, Any]:
    """Anthropic usage: ``input_tokens`` excludes the cached part OpenAI counts in."""
    details = usage.get("input_tokens_details") if isinstance(usage, dict) else None
    cache_read = _int(details, "cached_tokens")
    cache_write = _int(details, "cache_write_tokens") or _int(usage, "cache_write_tokens")
    out = openai_usage(_int(usage, "input_tokens"), _int(usage, "output_tokens"), cache_read, cache_write,
                       _reasoning_tokens(usage))
    if searches:
        out["server_tool_use"] = {"web_search_requests": searches}
    return out


def _reasoning_tokens(usage: Any) -> Optional[int]:
    """``output_tokens_details.reasoning_tokens`` (inside output_tokens already), None when not reported."""
    details = usage.get("output_tokens_details") if isinstance(usage, dict) else None
    return count_or_none(details.get("reasoning_tokens")) if isinstance(details, dict) else None


def count_searches(output: List[Dict[str, Any]]) -> int:
    return sum(1 for item in output if searched(item))


# --------------------------------------------------------------------------
# The whole message.


def last_call_cut(output: Any) -> Optional[str]:
    """The name of the last named function call when its arguments stop inside a string, or where
    no value could end (``toolargs.cut_short``): an answer cut by its output limit, though a
    compatible server called it completed (OpenAI's own says incomplete there). As on Chat
    (``cut_where_said_whole``): a Write must not run with half a file."""
    calls = [item for item in _list(output) if item.get("type") == "function_call" and text_field(item, "name")]
    if calls and cut_short(arguments_text(calls[-1].get("arguments"))):
        return text_field(calls[-1], "name")
    return None


def content_blocks(output: Any, tool_names: Dict[str, str], new_id: IdFactory, incomplete: bool = False,
                   thinking: bool = True, history: FrozenSet[str] = frozenset(), secrets: Tuple[str, ...] = ()
                   ) -> Tuple[List[Block], bool]:
    """All blocks of a Response's ``output`` in order, and whether a refusal was among them."""
    blocks: List[Block] = []
    refusal = False
    items = _list(output)
    # Only the last call can have been cut: the ones before it were whole when the next began.
    calls = [i for i, item in enumerate(items) if item.get("type") == "function_call"]
    cut_at = calls[-1] if calls and incomplete else None
    for i, item in enumerate(items):
        found, refused = item_blocks(item, tool_names, new_id, i == cut_at, thinking, secrets)
        blocks.extend(found)
        refusal = refusal or refused
    unique_tool_ids(blocks, history)
    return blocks, refusal


def cut_output(output: Any, stops: Tuple[str, ...]) -> Tuple[List[Any], Optional[str]]:
    """The output items up to the first stop string in an output_text part (cut there), and that string.

    The API takes no stop strings, so the proxy matches them (PROTOCOL.md 2.4): only answer
    text, not reasoning or a refusal. Items after the match (text, calls) are not the answer.
    """
    items = output if isinstance(output, list) else []  # positions kept: they are output_index
    finder = StopFinder(stops)  # once for every part (built, it reads every stop string)
    for i, item in enumerate(items):
        parts = _list(item.get("content")) if isinstance(item, dict) and item.get("type") == "message" else []
        for j, part in enumerate(parts):
            text, is_refusal = part_text(part)
            hit = None if is_refusal else finder.first(text)
            if hit is not None:
                cut = {**part, "text": text[: hit[0]], "annotations": cited_before(part.get("annotations"), hit[0])}
                return items[:i] + [{**item, "content": parts[:j] + [cut]}], hit[1]
    return items, None


def cited_before(annotations: Any, end: int) -> List[Any]:
    """The annotations whose span lies in ``text[:end]``: a citation of cut text cites nothing sent."""
    kept = []
    for annotation in annotations if isinstance(annotations, list) else ():
        stop = annotation.get("end_index") if isinstance(annotation, dict) else None
        if not isinstance(stop, int) or stop <= end:
            kept.append(annotation)
    return kept


def cut_stop_reason(has_tool_use: bool, refusal: bool) -> str:
    """The stop reason of an answer the proxy ended at a stop string: the rule order of
    PROTOCOL.md 2.4 (a call or refusal shown before it wins; the output limit came after it)."""
    return "tool_use" if has_tool_use else "refusal" if refusal else "stop_sequence"


def to_messages_response(
    obj: Any,
    *,
    model: str,
    new_id: IdFactory,
    tool_names: Dict[str, str],
    secrets: Tuple[str, ...] = (),
    stop_sequences: Tuple[str, ...] = (),
    thinking: bool = True,
    history: FrozenSet[str] = frozenset(),
    warnings: Optional[List[str]] = None,
) -> Dict[str, Any]:
    """The Anthropic ``Message`` for a Response object; ``ProxyError`` for a failed one or an error body.

    ``stop_sequences``: the client's; the text ends at the first (``cut_output``).
    ``thinking``: the client asked for thinking blocks (``item_blocks``).
    ``warnings``: what the translation had to decide is added to it (a call cut though completed).
    """
    if not isinstance(obj, dict):
        raise error_for({}, secrets, default="upstream returned a body that is not a Response object")
    failure = failure_of(obj, secrets)
    if failure is not None:
        raise failure
    if obj.get("status") in ("queued", "in_progress"):
        # No answer yet (a background response): not an empty one that ended its turn.
        raise error_for({}, secrets, default=f"upstream returned a response still {obj['status']}, with no answer")
    if not isinstance(obj.get("output"), list):
        # {} or a Chat Completion: no answer at all, not an empty one that ended its turn (Chat's 502).
        raise error_for({}, secrets, default="upstream returned a body that is not a Response object (no output list)")
    output, match = cut_output(obj.get("output"), stop_sequences) if stop_sequences else (obj.get("output"), None)
    incomplete = obj.get("status") == "incomplete"
    cut_call = None if incomplete else last_call_cut(output)
    blocks, refusal = content_blocks(output, tool_names, new_id, incomplete or cut_call is not None, thinking, history,
                                     secrets)
    has_tools = any(b["type"] == "tool_use" for b in blocks)
    if match is None and cut_call is not None:
        reason = "max_tokens"
        if warnings is not None:
            warnings.append(said_done_but_cut(f"status {obj.get('status')!r}", cut_call))
    elif match is None:
        reason = stop_reason_for(obj.get("status"), obj.get("incomplete_details"), has_tools, refusal)
    else:
        reason = cut_stop_reason(has_tools, refusal)
    upstream_id = text_field(obj, "id")
    return {
        "id": message_id(upstream_id, new_id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": reason,
        "stop_sequence": match if reason == "stop_sequence" else None,
        "usage": usage_from(obj.get("usage"), count_searches(_list(obj.get("output")))),
    }
