"""``GET /v1/models`` in Anthropic's shape (PROTOCOL.md 4.5). Pure.

The list is what the routes serve (``Router.served``), each entry with the
routed model's context window and output cap when they are known
(``max_input_tokens``, ``max_tokens``), plus, for routes that pass the
client's model name through, the upstream's own list. Paging follows
Anthropic's cursors: ``limit`` (default 20), ``after_id``, ``before_id``.
"""

from __future__ import annotations

import calendar
import time
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlencode, urlsplit

from .errors import InvalidRequest
from .routing import Target

DEFAULT_PAGE = 20  # Anthropic's default page size; the SDKs follow has_more/last_id
MAX_PAGE = 1000
MAX_UPSTREAM_PAGES = 5  # of an Anthropic API's own list, MAX_PAGE models each: a loop on a bad cursor stops
# The most models taken from one upstream list (OpenRouter's has some hundreds): each is routed and
# described, and a list of two million took 39 s and 950 MB to answer.
MAX_LISTED = 5000
Page = Tuple[int, Optional[str], Optional[str]]


def model_info(name: str, target: Optional[Target] = None, created: int = 0, display: str = "") -> Dict[str, Any]:
    """One ModelInfo; ``target`` adds where it is routed and what that model can take; ``display``
    is the upstream's own display name, if it gave one."""
    info: Dict[str, Any] = {
        "type": "model",
        "id": name,
        "display_name": display or name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
    }
    if target is not None:
        if target.model != name:
            info["display_name"] = f"{name} ({target.label})"
        if target.facts.context_window:
            info["max_input_tokens"] = target.facts.context_window
        if target.output_cap:
            info["max_tokens"] = target.output_cap
    return info


def upstream_models(body: Any) -> List[Tuple[str, int, str]]:
    """(id, created, display name) from an upstream model list: OpenAI's ``created`` or
    Anthropic's ``created_at``; the display name is Anthropic's, or ""."""
    items = body.get("data") if isinstance(body, dict) else None
    out = []
    for item in items[:MAX_LISTED] if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
            display = item.get("display_name")
            out.append((item["id"], _created(item), display if isinstance(display, str) else ""))
    return out


def page_request(after: Optional[str]) -> str:
    """The query for one page of an Anthropic API's model list: the largest page it allows."""
    return urlencode({"limit": MAX_PAGE, **({"after_id": after} if after else {})})


def next_page(body: Any) -> Optional[str]:
    """The ``after_id`` of the next page of an Anthropic model list, or None at its end."""
    if isinstance(body, dict) and body.get("has_more") is True and isinstance(body.get("last_id"), str):
        return body["last_id"] or None
    return None


def _created(item: Dict[str, Any]) -> int:
    created = item.get("created")
    if isinstance(created, int) and not isinstance(created, bool) and 0 <= created < 2**33:
        return created
    stamp = item.get("created_at")
    if isinstance(stamp, str):
        try:
            return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
        except (ValueError, OverflowError):
            return 0
    return 0


def page_query(path: str) -> Page:
    """``limit``, ``after_id`` and ``before_id`` from the query string; a bad limit is a 400."""
    query = parse_qs(urlsplit(path).query)
    raw = query.get("limit", [str(DEFAULT_PAGE)])[0].strip()
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidRequest(f"must be an integer from 1 to {MAX_PAGE}", "limit")
    return int(raw), query.get("after_id", [None])[0], query.get("before_id", [None])[0]


def paginate(models: List[Dict[str, Any]], page: Page) -> Dict[str, Any]:
    """One page of ``models`` as the list response (Anthropic's cursor rules)."""
    limit, after, before = page
    ids = [m["id"] for m in models]
    if (before is not None and before not in ids) or (after is not None and after not in ids):
        chosen, more = [], False  # a stale cursor ends the listing rather than restarting it (no paging loop)
    elif before is not None:
        # The page just before ``before_id``; "more" means more before it.
        end = ids.index(before)
        start = max(0, end - limit)
        chosen, more = models[start:end], start > 0
    else:
        start = ids.index(after) + 1 if after is not None else 0
        chosen, more = models[start:start + limit], start + limit < len(models)
    return {
        "data": chosen,
        "has_more": more,
        "first_id": chosen[0]["id"] if chosen else None,
        "last_id": chosen[-1]["id"] if chosen else None,
    }
