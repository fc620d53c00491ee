"""Upstream URLs for each API, built from a provider's base URL. Pure.

Base URLs are accepted the way people paste them: with or without a trailing
slash, with or without the ``/v1`` the path also carries, with the endpoint
already on the end, or with a query string of their own (Azure's ``api-version``).
"""

from __future__ import annotations

import re
from typing import Dict, Optional
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from .errors import InvalidRequest

_QUERY_SAFE = "!$%&'()*+,/:;=?@~-._"  # kept as they are in a forwarded query (escapes stay escapes)


def _with_query(url: str, extra: Dict[str, str]) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for key, value in extra.items():
        query.setdefault(key, value)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


# The endpoints of the two OpenAI APIs, which a base URL pasted whole may end in.
_ENDPOINT = re.compile(r"/(?:chat/completions|responses)$")


def join_path(base: str, suffix: str) -> str:
    """``base`` + ``suffix`` (once), keeping the base's query string. A base that ends in the other
    OpenAI API's endpoint (``/v1/chat/completions`` for a call to ``/responses``) is cut back to it
    first: a provider's Responses-only model went to ``/v1/chat/completions/responses``."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    if not path.endswith(suffix):
        path = _ENDPOINT.sub("", path) + suffix
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def chat_url(base: str, model: str, azure_api_version: Optional[str] = None) -> str:
    """The chat-completions URL; Azure puts the deployment (= model) in the path."""
    if azure_api_version is None:
        return join_path(base, "/chat/completions")
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    if "/openai/deployments/" not in path and not path.endswith("/openai/v1"):
        if not model.strip("."):  # "..": the request, and its key, would go one level up the path
            raise InvalidRequest(f"{model!r} is not an Azure deployment name", "model")
        path += "/openai/deployments/" + quote(model, safe="")
    url = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    url = join_path(url, "/chat/completions")
    if path.endswith("/openai/v1"):
        return url  # Azure's versionless v1 surface: a plain OpenAI base URL
    return _with_query(url, {"api-version": azure_api_version})


def models_url(base: str) -> str:
    parts = urlsplit(base)
    path = _ENDPOINT.sub("", parts.path.rstrip("/"))
    return urlunsplit((parts.scheme, parts.netloc, path + "/models", parts.query, ""))




def messages_url(base: str, path: str, query: str = "") -> str:
    """``base`` + an Anthropic API ``path`` (``/v1/messages``, ``/v1/models``).

    A base that already ends in ``/v1`` or ``/v1/messages`` (pasted from another
    client's settings) is cut back first, so the path is never doubled.
    """
    parts = urlsplit(base)
    prefix = re.sub(r"/v1(/messages)?$", "", parts.path.rstrip("/"))
    # The client's query goes on as sent, percent-encoded where http.client would refuse
    # it (non-ASCII, controls, "#"): http.server decodes the request line as Latin-1,
    # so each character is one byte the client sent.
    query = quote(query, safe=_QUERY_SAFE, encoding="latin-1", errors="replace")
    joined = "&".join(q for q in (parts.query, query) if q)
    return urlunsplit((parts.scheme, parts.netloc, prefix + path, joined, ""))
