"""Chat Completions as the pipeline sees it: parse, prepare, from_json, fold (``apis/base.py``). Pure."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ...anthropic_types import MessagesRequest, parse_messages_request
from ...dialects import Dialect
from ...ids import new_id
from ...routing import Target
from ...tool_memo import ToolMemo
from ...urls import chat_url
from ..base import ClientRequest, Exchange, encode_body, with_json
from .request import chat_tools, to_chat_request
from .response import message_from_body
from .stream import ChatFold, StreamTranslator


class ChatApi:
    name = "chat"
    translates = True  # the request is parsed and rewritten: local answers and local token counts apply

    def __init__(self, tools: ToolMemo) -> None:
        self.tools = tools  # the server's: a tool set is parsed and translated once per dialect

    def parse(self, body: Dict[str, Any]) -> MessagesRequest:
        return parse_messages_request(body, self.tools.parse)

    def prepare(self, req: ClientRequest, target: Target, cap: Optional[int]) -> Exchange:
        parsed, dialect = req.parsed, target.dialect
        assert parsed is not None and dialect is not None, "parse() runs before prepare()"
        # Some servers lose tool calls when streaming (PROTOCOL.md 5.6): ask them for JSON instead.
        wants_stream = parsed.stream and (dialect.stream_with_tools or not parsed.tools)
        tools, encoded = self.tools.derived(parsed.tools, ("chat", dialect),
                                            lambda: with_json(chat_tools(parsed.tools, dialect)))
        translation = to_chat_request(parsed, model=target.model, dialect=dialect, max_output_tokens=cap,
                                      stream=wants_stream, cache_key=req.cache_key, tools=tools)
        chat = translation.request
        body = encode_body(chat.to_dict(), "tools", encoded if chat.tools is tools[0] else None)
        azure = target.provider.azure_api_version if dialect.auth == "azure" else None
        headers = (("Content-Type", "application/json"),
                   ("Accept", "text/event-stream" if chat.stream else "application/json"))
        # The context keeps the tool names only: the request's dataclasses (~25 KiB for a Claude
        # Code turn) would otherwise stay alive for as long as the upstream takes to answer.
        return Exchange(chat_url(target.provider.url, target.model, azure), body, headers, chat.stream,
                        chat.max_tokens, translation.warnings, (translation.tool_names, target))

    def from_json(self, req: ClientRequest, ex: Exchange, obj: Any, secrets: Tuple[str, ...] = ()
                  ) -> Tuple[Dict[str, Any], List[str]]:
        tool_names, dialect = _context(ex)
        parsed = req.parsed
        assert parsed is not None
        return message_from_body(
            obj, model=req.model, new_id=new_id, tool_names=tool_names,
            stop_sequences=parsed.stop_sequences, dialect_name=dialect.name, think_tags=dialect.think_tags,
            secrets=secrets,
        )

    def fold(self, req: ClientRequest, ex: Exchange, *, message_id: str, input_tokens: int,
             secrets: Tuple[str, ...] = ()) -> ChatFold:
        tool_names, dialect = _context(ex)
        parsed = req.parsed
        assert parsed is not None
        translator = StreamTranslator(
            message_id=message_id, model=req.model, input_tokens=input_tokens, new_id=new_id,
            tool_names=tool_names, stop_sequences=parsed.stop_sequences,
            dialect_name=dialect.name, think_tags=dialect.think_tags, secrets=secrets,
        )
        return ChatFold(translator)


def _context(ex: Exchange) -> Tuple[Dict[str, str], Dialect]:
    tool_names, target = ex.context
    assert target.dialect is not None, "a chat target always has a dialect"
    return tool_names, target.dialect
