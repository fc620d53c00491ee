"""Anthropic request -> OpenAI request (PROTOCOL.md section 1, acceptance cases 1-4, 7-35).

The golden pairs in ``fixtures/requests`` carry most of the weight: each
``<case>.anthropic.json`` is a client body, ``<case>.openai.json`` the exact
upstream body written by hand from the spec, and the optional
``<case>.meta.json`` names the provider, the upstream model and the output cap.
The unit tests below cover what a fixture cannot show well: aliases, ids,
warnings and sizes.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Dict, List

import pytest

from claudeproxy.anthropic_types import parse_messages_request
from claudeproxy.dialects import DIALECTS, dialect_for
from claudeproxy.openai_types import parse_chat_response
from claudeproxy.translate_request import Translation, mistral_id, to_chat_request, tool_alias
from claudeproxy.translate_response import to_messages_response

HERE = os.path.dirname(os.path.abspath(__file__))
REQUESTS = os.path.join(HERE, "fixtures", "requests")
CASES = sorted(os.path.basename(p)[: -len(".anthropic.json")] for p in glob.glob(os.path.join(REQUESTS, "*.anthropic.json")))
OPENAI_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _load(name: str) -> Any:
    with open(os.path.join(REQUESTS, name), encoding="utf-8") as fh:
        return json.load(fh)


def translate(body: Dict[str, Any], provider: str = "generic", model: str = "", **kw: Any) -> Translation:
    req = parse_messages_request(body)
    upstream_model = model or req.model
    return to_chat_request(req, model=upstream_model, dialect=dialect_for(provider, upstream_model), **kw)


def user(content: Any) -> Dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> Dict[str, Any]:
    return {"role": "assistant", "content": content}


def body(messages: List[Dict[str, Any]], **extra: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {"model": "claude-test", "max_tokens": 100, "messages": messages}
    out.update(extra)
    return out


# --------------------------------------------------------------------------
# Golden fixtures.


def test_fixture_pairs_are_complete() -> None:
    assert len(CASES) >= 80
    for path in glob.glob(os.path.join(REQUESTS, "*.json")):
        stem = os.path.basename(path).rsplit(".", 2)[0]
        assert stem in CASES, f"{path} has no .anthropic.json partner"
    for case in CASES:
        assert os.path.exists(os.path.join(REQUESTS, f"{case}.openai.json")), case


@pytest.mark.parametrize("case", CASES)
def test_golden_request(case: str) -> None:
    meta_path = os.path.join(REQUESTS, f"{case}.meta.json")
    meta = _load(f"{case}.meta.json") if os.path.exists(meta_path) else {}
    translation = translate(
        _load(f"{case}.anthropic.json"),
        provider=meta.get("provider", "generic"),
        model=meta.get("model", ""),
        max_output_tokens=meta.get("max_output_tokens"),
    )
    assert translation.request.to_dict() == _load(f"{case}.openai.json")


@pytest.mark.parametrize("case", CASES)
def test_golden_request_is_json_and_leaves_no_anthropic_keys(case: str) -> None:
    """What goes upstream is plain JSON with none of the Anthropic-only keys OpenAI rejects."""
    meta_path = os.path.join(REQUESTS, f"{case}.meta.json")
    meta = _load(f"{case}.meta.json") if os.path.exists(meta_path) else {}
    sent = translate(_load(f"{case}.anthropic.json"), provider=meta.get("provider", "generic"),
                     model=meta.get("model", "")).request.to_dict()
    text = json.dumps(sent)
    for key in ("cache_control", "defer_loading", "context_management", "output_config", '"thinking": {"type": "adaptive'):
        assert key not in text, key
    assert "$schema" not in text
