"""Message threads (the ``thread`` field of the message-threads beta) through the proxy.

With a thread the client sends only a turn's new messages and Anthropic keeps the rest. No
upstream this proxy translates for keeps a conversation, so answering such a request would send
the model a history cut to its last turn, with no error anywhere. The proxy refuses it with the
error the SDKs' tool runners recover from (``thread_unsupported_request``: they send the whole
conversation again, without ``thread``); only Anthropic itself is forwarded the field.
"""
from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import CLIENT_KEY, minimal_request, request
from fakes import completion, json_reply

from claudeproxy.apis.base import ClientRequest
from claudeproxy.apis.messages import MessagesApi
from claudeproxy.config import Provider
from claudeproxy.errors import InvalidRequest
from claudeproxy.model_facts import ModelFacts
from claudeproxy.routing import Target

def post_to(server: Any, body: Any) -> Any:
    return request(server.url, "POST", "/v1/messages", body, {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"})


CONTINUE = {"type": "continue", "previous_message_id": "msg_01AbC"}
REFUSAL = {"type": "invalid_request_error",
           "message": "thread: message threads are not kept by this upstream: send the whole conversation, "
                      "without thread",
           "details": {"error_code": "thread_unsupported_request", "unsupported": []}}


@pytest.mark.parametrize("thread", [CONTINUE, {"type": "create"}])
@pytest.mark.parametrize("upstream_api", ["chat", "responses", "messages"])
def test_a_thread_is_refused_with_the_code_the_sdks_recover_from(make_proxy, fake_upstream, upstream_api, thread):
    server = make_proxy(upstream_api=upstream_api)
    for stream in (False, True):
        resp = post_to(server, minimal_request(thread=thread, stream=stream))
        assert resp.status == 400, resp
        assert resp.json["error"] == REFUSAL
        assert resp.json["request_id"] == resp.headers["request-id"]
    assert fake_upstream.requests == []  # nothing went upstream: the history there would be one turn


def test_without_a_thread_nothing_changes(make_proxy, fake_upstream):
    server = make_proxy()
    fake_upstream.push(json_reply(completion("fine")))
    resp = post_to(server, minimal_request(thread=None))  # null is no thread
    assert resp.status == 200, resp
    assert resp.json["content"] == [{"type": "text", "text": "fine"}]


def test_anthropic_itself_is_forwarded_the_thread() -> None:
    """Anthropic keeps threads: the field goes on, with the client's betas (where it is named)."""
    target = Target(Provider("anthropic", "https://api.anthropic.com", api="messages"), "claude-opus-4-1",
                    ModelFacts(), None, None, "messages")
    body = minimal_request(thread=CONTINUE)
    req = ClientRequest(body, "claude-opus-4-1", False, {"anthropic-beta": "message-threads-2026-08-12"}, "")
    ex = MessagesApi().prepare(req, target, None)
    assert json.loads(ex.body)["thread"] == CONTINUE
    assert ("anthropic-beta", "message-threads-2026-08-12") in ex.headers
    other = Target(Provider("compatible", "https://api.example.com/anthropic", api="messages"), "m",
                   ModelFacts(), None, None, "messages")
    with pytest.raises(InvalidRequest) as info:
        MessagesApi().prepare(req, other, None)
    assert info.value.details == REFUSAL["details"]
