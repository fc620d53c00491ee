"""A request's translation costs time in proportion to its size, whatever its shape.

A client controls the shape of the history: 100,000 one-word user turns in a row (a 3 MB
body, under the body cap) or 20,000 parallel tool calls and their results. Each once cost
time quadratic in the count -- consecutive turns were joined by copying the growing content
at each one, a result's call was found by a scan of the open calls -- and a few such bodies
held their threads and concurrency slots for minutes after their clients had gone.

The check is a ratio in one process, not a time: four times the items may cost at most ten
times the CPU (linear is 4x; the quadratic code was 16-22x). Best of three, in thread CPU time.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List

import pytest

from claudeproxy.anthropic_types import MessagesRequest, parse_messages_request
from claudeproxy.apis.chat.request import to_chat_request
from claudeproxy.apis.responses.request import to_responses_request
from claudeproxy.dialects import DIALECTS

TRANSLATE: Dict[str, Callable[[MessagesRequest], Dict[str, Any]]] = {
    # generic merges consecutive user turns (openai keeps them apart); Responses merges every role
    "chat": lambda req: to_chat_request(req, model="m", dialect=DIALECTS["generic"]).request.to_dict(),
    "responses": lambda req: to_responses_request(req, model="m").body,
}


def _system_turns(n: int) -> MessagesRequest:
    return parse_messages_request({"model": "m", "max_tokens": 5, "messages": [
        {"role": "system", "content": f"rule {i}"} for i in range(n)] + [{"role": "user", "content": "go"}]})


def _user_turns(n: int) -> MessagesRequest:
    return parse_messages_request({"model": "m", "max_tokens": 5,
                                   "messages": [{"role": "user", "content": f"w{i}"} for i in range(n)]})


def _parallel_calls(n: int) -> MessagesRequest:
    uses = [{"type": "tool_use", "id": f"toolu_{i}", "name": "f", "input": {}} for i in range(n)]
    results = [{"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": f"r{i}"} for i in range(n)]
    return parse_messages_request({
        "model": "m", "max_tokens": 5, "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": uses},
                     {"role": "user", "content": results}]})


def _cpu(translate: Callable[[MessagesRequest], Any], req: MessagesRequest) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.thread_time()
        translate(req)
        best = min(best, time.thread_time() - start)
    return max(best, 1e-4)  # a clock tick: a fast run must not make the ratio huge


TRANSLATE["chat-mistral"] = lambda req: to_chat_request(req, model="m", dialect=DIALECTS["mistral"]).request.to_dict()


@pytest.mark.parametrize("api", sorted(TRANSLATE))
@pytest.mark.parametrize("shape, small", [(_user_turns, 10_000), (_parallel_calls, 2_500), (_system_turns, 5_000)],
                         ids=["consecutive-user-turns", "parallel-tool-results", "leading-system-turns"])
def test_four_times_the_items_cost_at_most_ten_times_the_cpu(api: str, shape: Any, small: int) -> None:
    translate = TRANSLATE[api]
    ratio = _cpu(translate, shape(small * 4)) / _cpu(translate, shape(small))
    assert ratio < 10, f"{ratio:.1f}x the CPU for 4x the items"


def _texts(items: List[Dict[str, Any]]) -> List[str]:
    out = []
    for item in items:
        content = item.get("content")
        parts = content if isinstance(content, list) else [{"text": content}] if isinstance(content, str) else []
        out += [p["text"] for p in parts if "text" in p]
    return out


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_run_of_user_turns_becomes_one_message_in_order(api: str) -> None:
    body = TRANSLATE[api](_user_turns(5_000))
    turns = body["messages"] if api == "chat" else body["input"]
    assert len(turns) == 1 and turns[0]["role"] == "user"
    assert _texts(turns) == [f"w{i}" for i in range(5_000)]


def test_every_parallel_result_answers_its_own_call_in_order() -> None:
    messages = TRANSLATE["chat"](_parallel_calls(3_000))["messages"]
    assert [m["role"] for m in messages[:2]] == ["user", "assistant"]
    assert len(messages[1]["tool_calls"]) == 3_000
    tools = messages[2:]
    assert [(m["role"], m["tool_call_id"], m["content"]) for m in tools] == \
        [("tool", f"toolu_{i}", f"r{i}") for i in range(3_000)]
    items = TRANSLATE["responses"](_parallel_calls(3_000))["input"]
    outputs = [(i["call_id"], i["output"]) for i in items if i.get("type") == "function_call_output"]
    assert outputs == [(f"toolu_{i}", f"r{i}") for i in range(3_000)]
