"""OpenAI Responses stream events -> Anthropic stream events (RESPONSES.md sections 3, 6).

Sans-io: ``ResponsesFold`` takes the upstream body's whole lines as they are read
(``upstream.iter_lines``: those of one read together) and returns the exact Anthropic
event payloads to write, in order; it never reads a socket or a clock (the ids it makes
are random). All state of one stream lives in one
instance.

Text, refusal, reasoning-summary and function-argument deltas go out as they
arrive. What only an item's ``.done`` knows (the encrypted reasoning, the
search query and sources, citations) goes out there. Anything the deltas
missed is filled in from the ``.done`` events, and what the stream left
unfinished from ``response.completed``, so a stream gives the same blocks as
the JSON answer (``response.to_messages_response``).

A call's arguments and a reasoning item's thinking (its text, then the
signature that carries its blob) are one block each, and a block cannot
reopen. So while one of them is open, the events of other items wait
(``_item_event``) until it closes: at its item's ``.done``, a call's
arguments' ``.done``, or the terminal event. Text does not hold others up:
text of an item that goes on after another block goes in a block of its own.

The grammar it guarantees: ``message_start``, then blocks with indexes 0..n,
each started, given its deltas and stopped, one open at a time, then one
``message_delta`` and ``message_stop`` -- or, after a failure, exactly one
``error`` and nothing more. ``message_start`` waits for the first block, so
a request that fails before any output (``context_length_exceeded`` arrives
as ``response.failed``) can still be answered with a plain HTTP error.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
from typing import Any, Deque, Dict, FrozenSet, List, Optional, Set, Tuple, Union

from ...errors import ProxyError, UpstreamUnavailable, stream_error_event
from ...ids import first_free
from ...replies import as_answered, block_events, events_for_message, message_start
from ...signatures import encode_signature
from ...skim import LineSkimmer, Repeat, SkimmedLine, holds_repeat, restore, text_digest
from ...sse import ServerSentEvent, SSEDecoder, SSEFold, is_done, loads_data
from ..names import client_tool_id, own_tool_id
from ..growing import Growing, LiveText
from ..stops import StopScan
from ..toolargs import KEEP_LIVE_TEXT, TURNED_BAD, ArgsScan, cut_short, said_done_but_cut
from . import API_NAME
from .response import (
    IdFactory,
    arguments_text,
    cited_before,
    cut_output,
    cut_stop_reason,
    error_for,
    failure_of,
    item_blocks,
    last_call_cut,
    part_text,
    reasoning_text,
    reports_usage,
    search_blocks,
    searched,
    stop_reason_for,
    text_block,
    text_field,
    to_messages_response,
    tool_input,
    usage_from,
)

log = logging.getLogger(__name__)
Event = Dict[str, Any]
Key = Tuple[Any, ...]
MAX_HEAD = 64 * 1024  # bytes of a body kept until its first event: a bare JSON error fits in it
_INDEX_FIELDS = ("output_index", "content_index", "summary_index")  # used in dict keys
_THINKING_START = {"type": "thinking", "thinking": "", "signature": ""}


@dataclasses.dataclass
class _Item:
    """What the stream has said so far about one output item."""

    kind: str
    id: str = ""
    kinds: Set[str] = dataclasses.field(default_factory=set)  # of all events about it (slot -1: several items)
    # reasoning: all text sent (separators included), per-part text, the part that spoke last
    text: Growing = dataclasses.field(default_factory=Growing)
    parts: Dict[Key, Growing] = dataclasses.field(default_factory=dict)
    last_part: Optional[Key] = None
    # function_call
    call_id: str = ""
    name: str = ""
    args: LiveText = dataclasses.field(default_factory=LiveText)  # let go past KEEP_LIVE_TEXT once live
    scanned: int = 0  # characters of args fed to scan
    scan: ArgsScan = dataclasses.field(default_factory=ArgsScan)  # what of args may be streamed
    blob: Optional[str] = None  # reasoning: encrypted_content, from .done
    done: Optional[Dict[str, Any]] = None  # function_call: its .done item, while another call's block is open
    complete: bool = False  # its output_item.done came: what it said is final, later deltas are repeats

    @property
    def cut_short(self) -> bool:
        """A call's arguments stop inside a string, or where no value could end (``toolargs.cut_short``).
        A live call past KEEP_LIVE_TEXT let its text go: still open then, it was cut (as on Chat)."""
        if self.args.whole:
            return cut_short(self.args.text())
        return self.scan.left_open


@dataclasses.dataclass
class _Open:
    key: Key  # ("r", slot) | ("t", slot, content_index) | ("f", slot); a slot is what _slot returns
    kind: str  # thinking | text | tool_use
    index: int


class ResponsesFold(SSEFold):
    """Responses SSE lines in, Anthropic events out. See the module docstring."""

    # A call's ``.done`` events and ``response.completed`` repeat its whole arguments (a text's
    # ``.done`` its text) on one line each: a 2 MB Write must not end at the 1 MiB line cap
    # after its deltas went out. The final object holds every item once, each as long as
    # its deltas, plus what came back of the request (its tools, its instructions).
    line_allowance = 2.0

    def __init__(
        self,
        *,
        message_id: str,
        model: str,
        input_tokens: int,
        new_id: IdFactory,
        tool_names: Optional[Dict[str, str]] = None,
        secrets: Tuple[str, ...] = (),
        thinking: bool = True,
        history: FrozenSet[str] = frozenset(),
    ) -> None:
        self.message_id = message_id
        self.model = model
        self.history = history  # the conversation's tool ids (``tool_use_ids``): no call may repeat one
        self.input_tokens = input_tokens
        self.new_id = new_id
        self.tool_names = tool_names or {}
        self.secrets = secrets
        self.thinking = thinking  # the client asked for thinking (request.wants_thinking): else reasoning gives no block
        self.stops: Tuple[str, ...] = ()  # the client's stop strings: LocalStopResponsesFold matches them
        self.decoder = SSEDecoder()
        self.started = False
        self.done = False  # message_stop or error written
        self.complete = False  # the upstream's terminal event was read
        self.saw_done_marker = False
        self.head = b""  # the body up to its first event, for a bare JSON error (``_bare_error``)
        self.seen_event = False
        self.next_index = 0
        self.open: Optional[_Open] = None
        self.items: Dict[Any, _Item] = {}  # per slot (_slot), in the order first mentioned
        self.slots: Dict[str, Any] = {}  # item id -> its slot, for events that name only the id
        # Events waiting behind another item's open block (_holder), per slot, with their arrival number.
        self.waiting: Dict[Any, Deque[Tuple[int, str, Dict[str, Any], int]]] = {}
        self.arrivals = 0
        self.held_bytes = 0  # the size of the events that wait now (MAX_HELD_BYTES)
        self.text_sent: Dict[Key, Growing] = {}  # text per (slot, content_index) part
        self.annotations: Dict[Key, List[Any]] = {}
        self.cited: Dict[Key, int] = {}  # citations already sent per part
        self.closed: Set[Key] = set()  # keys whose block was stopped
        # The calls in output order (_call_order, kept until an item is added) and how far along
        # it every call is closed: a call waits behind the first one that is not (_held_back).
        self.order: Optional[List[Any]] = None
        self.order_closed = 0
        self.ending = False  # the terminal event came: what waits is placed, whatever never ended
        self.draining = False  # _waiting_calls is placing calls (a call it places does not start it again)
        self.finished: Set[Key] = set()  # text parts whose .done came: their text is final
        self.tool_ids: Set[str] = set(history)  # taken: this answer's calls', and the conversation's
        self.has_tools = False
        self.refusal = False
        self.incomplete = False  # the terminal event said incomplete: a call's arguments may be cut
        self.searches = 0
        self.out_chars = 0
        # For metrics: the stop reason at the end; the usage as soon as the upstream gives it ({}: unknown).
        self.stop_reason: Optional[str] = None
        self.usage: Dict[str, Any] = {}
        # Long strings of skimmed lines (``skim``), by marker, until their event is parsed.
        self.skimmed: Dict[str, Tuple[Union[str, Repeat], int]] = {}
        self.nonce = os.urandom(8).hex()  # in the markers: no upstream text can name one
        self.skims = 0  # lines skimmed: each numbers its markers apart
        self.head_skimmed = False  # the body began with a line too long for a bare JSON error

    # ------------------------------------------------------------------
    # The relay's interface.

    @property
    def finishing(self) -> bool:
        """The upstream said it is done ([DONE] from a compatible server, or the terminal event)."""
        return self.complete or self.saw_done_marker

    def feed_line(self, raw: bytes) -> List[Event]:
        if not self.seen_event and len(self.head) < MAX_HEAD:
            self.head += raw[: MAX_HEAD - len(self.head)]
            self.head_skimmed = self.head_skimmed or isinstance(raw, SkimmedLine)
        strings = getattr(raw, "strings", None)  # a skimmed line's (LineSkimmer)
        if strings:
            self.skimmed.update(strings)
        try:
            return super().feed_line(raw)
        finally:
            if self.skimmed and not self.decoder.pending:
                self.skimmed = {}  # what no event took (a comment, an event: line, a bad event): let go

    def line_skimmer(self) -> LineSkimmer:
        """A long line (the closing events repeat each call's whole arguments) is read in pieces;
        what repeats the arguments of a live call, which the fold holds only as digests, is let go
        from it too (``_take_whole`` compares the rest). Calls with the same arguments are one text.

        Only while every call not yet done is such a live call: one still held whole (not live,
        its events waiting behind another call, its arguments only in its closing events) may
        take any string of this line whole, and what it is compared with must be there."""
        self.skims += 1
        calls = [item for item in self.items.values() if item.kind == "function_call"]
        if any(item.args.whole and not item.complete for item in calls):
            return LineSkimmer((), f"{self.nonce}.{self.skims}")
        known = {item.args.known() for item in calls if not item.args.whole}
        return LineSkimmer(sorted(known), f"{self.nonce}.{self.skims}")

    def end(self, clean: bool = False) -> Tuple[List[Event], Optional[ProxyError]]:
        """The body ended: the events that finish the message, or the error it ended with.

        Without ``response.completed``/``incomplete`` the answer is cut short,
        whatever the HTTP framing says (RESPONSES.md 3).
        """
        events, error = self._last_event()
        if error is not None:
            return [], error
        if self.complete:
            return events, None
        bare = self._bare_error()
        if bare is not None:
            return [], bare
        return events, UpstreamUnavailable("upstream stream ended early (no response.completed)")

    def _bare_error(self) -> Optional[ProxyError]:
        """A 200 event-stream whose whole body is an error object (``{"error": {...}}``, no event
        lines; some gateways do this): the error it says, mapped as the same body in a JSON answer
        is, instead of "ended early"."""
        if self.seen_event or self.head_skimmed or not self.head.lstrip().startswith(b"{"):
            return None  # a skimmed line is past MAX_HEAD: no error object whole in the head
        try:
            obj = json.loads(self.head.decode("utf-8", errors="replace"))
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("error"), dict):
            return None
        return failure_of(obj, self.secrets)

    def start(self) -> List[Event]:
        """``message_start`` (once)."""
        if self.started:
            return []
        self.started = True
        return [message_start(self.message_id, self.model, self.input_tokens)]

    def fail(self, exc: ProxyError) -> List[Event]:
        """The one terminal ``error`` event; nothing once the stream has ended."""
        if self.done:
            return []
        self.done = self.complete = True
        return [stream_error_event(exc.error_type, exc.message)]

    def from_json(self, obj: Any) -> List[Event]:
        """The whole stream for a JSON Response given to a stream request."""
        message = to_messages_response(
            obj, model=self.model, new_id=self.new_id, tool_names=self.tool_names, secrets=self.secrets,
            stop_sequences=self.stops, thinking=self.thinking, history=self.history,
        )
        reported = isinstance(obj, dict) and reports_usage(obj.get("usage"))
        message = as_answered(message, self.message_id, self.input_tokens, bool(reported))  # as pipeline's _json
        events: List[Event] = []
        if not self.started:  # else start() already sent one (pings while the body was slow)
            self.started = True
            events = events_for_message(message)[:1]
        for block in message["content"]:
            events += self._whole_block(block)
        self.stop_reason, self.usage = message["stop_reason"], message["usage"] if reported else {}
        return events + self._ending(message["stop_reason"], message["usage"], message["stop_sequence"])

    # ------------------------------------------------------------------
    # Dispatch.

    def _on_event(self, event: ServerSentEvent) -> List[Event]:
        self.seen_event = True
        if is_done(event.data):
            self.saw_done_marker = True  # not OpenAI's; some compatible servers add it
            return []
        try:
            obj = loads_data(event.data)
        except (ValueError, RecursionError):
            return self._bad_event(event)
        skimmed = 0  # the characters its long strings had beyond their markers: the size is the line's
        if self.skimmed:
            obj, skimmed = restore(obj, self.skimmed)  # takes each marker's string out of the table
        self.bad_events = 0
        if not isinstance(obj, dict):
            return []
        for name in _INDEX_FIELDS:
            if isinstance(obj.get(name), (list, dict)):
                obj = {**obj, name: None}  # indices become dict keys: an array or object there is no index
        # Dispatch on data.type: some compatible servers send no "event:" line; a line that is only
        # an error object ({"error": {...}}, no type) is that error, as on Chat.
        kind = text_field(obj, "type") or event.event or ("error" if isinstance(obj.get("error"), dict) else "")
        handler = _HANDLERS.get(kind)
        if handler is None:
            return []
        if handler in _ITEM_HANDLERS:
            return self._item_event(handler, obj, len(event.data) + skimmed)
        return getattr(self, handler)(obj)

    # ------------------------------------------------------------------
    # Items that wait: one block at a time, and a call's or a reasoning item's cannot be cut.

    def _item_event(self, handler: str, obj: Dict[str, Any], size: int) -> List[Event]:
        """An output item's event: handled now, or kept until the open block of another item that
        holds the stream closes (``_holder``). Closing that block would cut a call's arguments (the
        client ran the tool with ``{}`` or half an input) or split a reasoning item's thinking from
        its signature (the blob lost on replay)."""
        slot = self._slot(obj)
        holder = self._holder()
        if holder is not None and slot != holder:
            self.waiting.setdefault(slot, collections.deque()).append((self.arrivals, handler, obj, size))
            self.arrivals += 1
            self.held_bytes += size
            if self.held_bytes < MAX_HELD_BYTES:
                return []
            # An item that never ends (no .done, a server that streams everything else meanwhile):
            # the stream goes on, not the proxy's memory. A thinking block ends here (its blob is
            # lost); a call's would end with half its arguments, which the client would run.
            if self.open is not None and self.open.kind == "tool_use":
                raise UpstreamUnavailable(f"upstream kept a tool call's arguments open while {self.held_bytes} "
                                          "bytes of other output came")
            log.warning("a Responses stream held %d bytes of events behind a reasoning item; its block is closed",
                        self.held_bytes)
            return self._close() + self._release()
        return getattr(self, handler)(obj) + self._release()

    def _holder(self) -> Any:
        """The slot whose open block other items wait behind, or None: a call streaming its arguments,
        a reasoning item's thinking before its ``.done`` (the blob). Not text: more text for an item
        goes in a block of its own. Not slot -1 (events that name no item: several items may be run
        together there, and no ``.done`` says when they end)."""
        if self.open is None or self.open.kind == "text" or self.open.key[1] == -1:
            return None
        return self.open.key[1]

    def _release(self) -> List[Event]:
        """The waiting events that may go now, in the order they came: the earliest of any item, or,
        while a block holds the stream (one of them opened it), only the rest of that block's item.
        Each item's own events keep their order."""
        events: List[Event] = []
        while self.waiting and not self.done:
            holder = self._holder()
            if holder is not None:
                slot = holder if holder in self.waiting else None
            else:
                slot = min(self.waiting, key=lambda s: self.waiting[s][0][0])
            if slot is None:
                return events
            queue = self.waiting[slot]
            _, handler, obj, size = queue.popleft()
            self.held_bytes -= size
            if not queue:
                del self.waiting[slot]
            events += getattr(self, handler)(obj)
        return events

    def _bad_event(self, event: ServerSentEvent) -> List[Event]:
        if event.event == "error":  # "event: error" with a plain-text message is still an error
            self.complete = True
            raise error_for({"message": event.data}, self.secrets)
        return self._not_json()

    # ------------------------------------------------------------------
    # Blocks.

    def _open(self, key: Key, kind: str, start: Dict[str, Any]) -> List[Event]:
        events = self.start() + self._close()
        self.open = _Open(key, kind, self.next_index)
        self.next_index += 1
        return events + [{"type": "content_block_start", "index": self.open.index, "content_block": start}]

    def _delta(self, delta: Dict[str, Any]) -> Event:
        assert self.open is not None
        return {"type": "content_block_delta", "index": self.open.index, "delta": delta}

    def _close(self) -> List[Event]:
        """Stop the open block; a thinking block gets its signature, a text block its citations."""
        if self.open is None:
            return []
        events: List[Event] = []
        if self.open.kind == "thinking":
            events.append(self._delta({"type": "signature_delta", "signature": self._signature(self.open.key[1])}))
        elif self.open.kind == "text":
            events += self._citations(self.open.key)
        elif self.open.kind == "tool_use" and self.open.key[1] in self.items:
            rest = self.items[self.open.key[1]].scan.flush()  # a call cut short: what was held back, as it came
            if rest:
                self.out_chars += len(rest)
                events.append(self._delta({"type": "input_json_delta", "partial_json": rest}))
        events.append({"type": "content_block_stop", "index": self.open.index})
        self.closed.add(self.open.key)
        self.open = None
        return events

    def _is_open(self, key: Key) -> bool:
        return self.open is not None and self.open.key == key

    def _whole_block(self, block: Dict[str, Any]) -> List[Event]:
        """A block known in full (search results, a JSON answer), as start/deltas/stop."""
        events = self.start() + self._close()
        index = self.next_index
        self.next_index += 1
        return events + block_events(index, block)

    # ------------------------------------------------------------------
    # Items.

    def _slot(self, obj: Dict[str, Any]) -> Any:
        """Which output item an event is about: its ``output_index``; without one (some compatible
        servers omit it), the item id it names, so parallel calls stay apart (RESPONSES.md 7
        pitfall 8); -1 when it names neither (all such events are one item)."""
        index = obj.get("output_index")
        item_id = text_field(obj, "item_id") or text_field(_dict(obj.get("item")), "id")
        if isinstance(index, int) and not isinstance(index, bool):
            if item_id:
                self.slots.setdefault(item_id, index)
            return index
        return self.slots.setdefault(item_id, item_id) if item_id else -1

    def _item_at(self, slot: Any, kind: str = "") -> _Item:
        """The state of the item in ``slot`` (created on first mention: servers skip .added)."""
        item = self.items.get(slot)
        if item is None:
            item = self.items[slot] = _Item(kind)
            self.order = None  # (an index below one already seen may come: the order is made again)
        item.kind = item.kind or kind
        if kind:
            item.kinds.add(kind)
        return item

    def _item_added(self, obj: Dict[str, Any]) -> List[Event]:
        raw = _dict(obj.get("item"))
        slot = self._slot(obj)
        item = self._item_at(slot, str(raw.get("type") or ""))
        item.id = item.id or text_field(raw, "id")
        if item.kind != "function_call":
            return []
        item.call_id = item.call_id or text_field(raw, "call_id")
        item.name = item.name or text_field(raw, "name")
        if not item.args:
            # Only text: an object here is a placeholder ({}) the deltas then fill, not the arguments
            # (those come whole with the closing events, which take an object: _take_whole).
            item.args = LiveText(text_field(raw, "arguments"))
        return self._maybe_live(slot, item)

    def _item_done(self, obj: Dict[str, Any]) -> List[Event]:
        raw = _dict(obj.get("item"))
        index = self._slot(obj)
        item = self._item_at(index, str(raw.get("type") or ""))
        if item.complete:
            return []  # a repeated .done: everything it says was placed the first time
        return self._finish(index, item, raw)

    def _finish(self, index: Any, item: _Item, raw: Dict[str, Any]) -> List[Event]:
        """An item is done (``raw``: the item as its ``.done`` or the final object gives it): what
        the stream has not sent of it goes out, and its block closes."""
        item.complete = True
        finish = {
            "reasoning": self._reasoning_done,
            "message": self._message_done,
            "function_call": self._call_done,
            "web_search_call": self._search_done,
        }.get(item.kind)
        return finish(index, item, raw) if finish else []

    # ------------------------------------------------------------------
    # Reasoning: summary (and raw reasoning) deltas as thinking; the blob at .done.

    def _thinking_text(self, index: Any, part: Key, text: str) -> List[Event]:
        """Thinking text for one summary/reasoning part; parts are blank-line separated."""
        item = self._item_at(index, "reasoning")
        if not text or item.complete or not self.thinking:
            return []  # after its .done the block has its whole text and its signature: a late delta repeats it
        item.parts.setdefault(part, Growing()).add(text)
        if item.text and item.last_part != part:
            text = "\n\n" + text
        item.last_part = part
        return self._emit_thinking(index, item, text)

    def _emit_thinking(self, index: Any, item: _Item, text: str) -> List[Event]:
        events: List[Event] = []
        key = ("r", index)
        if not self._is_open(key):
            events += self._open(key, "thinking", dict(_THINKING_START))
        item.text.add(text)
        self.out_chars += len(text)
        return events + [self._delta({"type": "thinking_delta", "thinking": text})]

    def _summary_delta(self, obj: Dict[str, Any]) -> List[Event]:
        return self._thinking_text(self._slot(obj), ("s", _index(obj, "summary_index")), text_field(obj, "delta"))

    def _reasoning_text_delta(self, obj: Dict[str, Any]) -> List[Event]:
        return self._thinking_text(self._slot(obj), ("c", _index(obj, "content_index")), text_field(obj, "delta"))

    def _summary_done(self, obj: Dict[str, Any]) -> List[Event]:
        return self._fill_part(obj, ("s", _index(obj, "summary_index")))

    def _reasoning_text_done(self, obj: Dict[str, Any]) -> List[Event]:
        return self._fill_part(obj, ("c", _index(obj, "content_index")))

    def _fill_part(self, obj: Dict[str, Any], part: Key) -> List[Event]:
        """A part's ``.done`` text: send what its deltas missed."""
        slot = self._slot(obj)
        item = self._item_at(slot, "reasoning")
        sent, full = item.parts.get(part, Growing()).text(), text_field(obj, "text")
        if len(full) > len(sent) and full.startswith(sent):
            return self._thinking_text(slot, part, full[len(sent):])
        return []

    def _reasoning_done(self, index: Any, item: _Item, raw: Dict[str, Any]) -> List[Event]:
        """The signature carries ``{id, encrypted_content}``; taken here, ``.added`` may hold a partial blob.

        One block per reasoning item: other items waited behind it (``_holder``), so it is still open
        here, signed once; a key already closed gets no second block.
        """
        if not self.thinking:
            return []  # not asked for: no thinking block, and without include no blob to carry
        item.id = text_field(raw, "id") or item.id
        item.blob = text_field(raw, "encrypted_content") or None
        full = reasoning_text(raw)
        events: List[Event] = []
        sent = item.text.text()
        if len(full) > len(sent) and full.startswith(sent):
            events += self._emit_thinking(index, item, full[len(sent):])
        key = ("r", index)
        if not self._is_open(key) and item.blob and key not in self.closed:
            # Text-less reasoning still needs its block, or the blob is lost (RESPONSES.md 6).
            events += self._open(key, "thinking", dict(_THINKING_START))
        return events + (self._close() if self._is_open(key) else [])

    def _signature(self, index: Any) -> str:
        item = self.items.get(index) or _Item("reasoning")
        return encode_signature(API_NAME, {"id": item.id, "encrypted_content": item.blob})

    # ------------------------------------------------------------------
    # Message text and refusals.

    def _text_key(self, obj: Dict[str, Any]) -> Key:
        """A message part's key. Its item is a message the stream spoke of (the final object fills in
        what it did not finish); no content_index (compatible servers) is part 0, as ``.done``
        keys it, so its text does not go out twice."""
        slot = self._slot(obj)
        self._item_at(slot, "message")
        return ("t", slot, _index(obj, "content_index"))

    def _text_delta(self, obj: Dict[str, Any], refusal: bool = False) -> List[Event]:
        key = self._text_key(obj)
        if key in self.finished or self._item_at(key[1], "message").complete:
            return []  # a late delta for a finished part: its text went out whole at .done, once is enough
        return self._emit_text(key, text_field(obj, "delta"), refusal)

    def _refusal_delta(self, obj: Dict[str, Any]) -> List[Event]:
        return self._text_delta(obj, refusal=True)

    def _emit_text(self, key: Key, text: str, refusal: bool) -> List[Event]:
        if not text:
            return []  # no empty blocks, no empty deltas (FIELD-NOTES 12)
        events: List[Event] = []
        if not self._is_open(key):
            events += self._open(key, "text", {"type": "text", "text": ""})
        self.text_sent.setdefault(key, Growing()).add(text)
        self.out_chars += len(text)
        self.refusal = self.refusal or refusal
        return events + [self._delta({"type": "text_delta", "text": text})]

    def _fill_text(self, key: Key, full: str, refusal: bool) -> List[Event]:
        """What ``full`` has beyond the text sent for the part; after its block closed (another
        item's block came between) in a block of its own, as a late delta goes, not lost."""
        sent = self._sent(key)
        if len(full) > len(sent) and full.startswith(sent):
            return self._emit_text(key, full[len(sent):], refusal)
        return []

    def _text_done(self, obj: Dict[str, Any]) -> List[Event]:
        key = self._text_key(obj)
        events = self._fill_text(key, text_field(obj, "text"), False)
        self.finished.add(key)
        return events

    def _refusal_done(self, obj: Dict[str, Any]) -> List[Event]:
        key = self._text_key(obj)
        events = self._fill_text(key, text_field(obj, "refusal"), True)
        self.finished.add(key)
        return events

    def _annotation(self, obj: Dict[str, Any]) -> List[Event]:
        self.annotations.setdefault(self._text_key(obj), []).append(obj.get("annotation"))
        return []

    def _part_done(self, obj: Dict[str, Any]) -> List[Event]:
        return self._finish_part(self._text_key(obj), _dict(obj.get("part")))

    def _finish_part(self, key: Key, part: Dict[str, Any]) -> List[Event]:
        """A finished content part: missing text, then its citations, then the stop."""
        text, refusal = part_text(part)
        if isinstance(part.get("annotations"), list):
            self.annotations[key] = list(part["annotations"])  # the whole list, in order
        events = self._fill_text(key, text, refusal)
        self.finished.add(key)
        return events + (self._close() if self._is_open(key) else [])

    def _sent(self, key: Key) -> str:
        """The text received for a part (and sent, or held at a stop string's start)."""
        sent = self.text_sent.get(key)
        return sent.text() if sent is not None else ""

    def _citations(self, key: Key) -> List[Event]:
        block = text_block(self._sent(key), self.annotations.get(key), self.secrets)
        cites = block.get("citations", []) if block else []
        events = [self._delta({"type": "citations_delta", "citation": c}) for c in cites[self.cited.get(key, 0):]]
        self.cited[key] = len(cites)
        return events

    def _message_done(self, index: Any, item: _Item, raw: Dict[str, Any]) -> List[Event]:
        events: List[Event] = []
        content = raw.get("content")
        for ci, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict):
                events += self._finish_part(("t", index, ci), part)
        if self.open is not None and self.open.key[:2] == ("t", index):
            events += self._close()
        return events

    # ------------------------------------------------------------------
    # Function calls: arguments stream live once the block can be opened.

    def _maybe_live(self, index: Any, item: _Item) -> List[Event]:
        """Open the tool block once its id and name are known and its arguments show they are a
        JSON object (``{`` then ``"`` or ``}``, nothing invalid yet); then stream what the scan
        passes on (``ArgsScan``: nothing after the object closed, at invalid JSON the brackets
        that close what was sent).

        Until then the arguments wait (a call whose ``call_id``/``name`` come only
        with ``.done``, arguments that are not an object, RESPONSES.md 7.8): they are
        placed whole, repaired, at the call's end.
        """
        key = ("f", index)
        if key in self.closed:
            return []
        opened = self._is_open(key)
        if not opened and (not (item.call_id and item.name) or self._held_back(key)):
            return []  # one block at a time (RESPONSES.md 7 pitfall 8): it waits for that call's end
        if len(item.args) > item.scanned:
            item.scan.feed(item.args.since(item.scanned))
            item.scanned = len(item.args)
        events: List[Event] = []
        if not opened:
            if not item.scan.started or item.scan.bad:
                return []
            events = self._open(key, "tool_use", self._tool_start(item))
        if len(item.args) > KEEP_LIVE_TEXT:
            item.args.let_go()  # scanned, and the block is open: what is held went on or stays in the scan
        text = item.scan.take()
        if not text:
            return events
        if item.scan.bad:
            log.warning(TURNED_BAD, item.name, item.call_id)
        self.out_chars += len(text)
        return events + [self._delta({"type": "input_json_delta", "partial_json": text})]

    def _tool_start(self, item: _Item) -> Dict[str, Any]:
        tool_id = self._claim_tool_id(client_tool_id(own_tool_id(item.call_id, self.secrets)) or "toolu_" + self.new_id())
        return {"type": "tool_use", "id": tool_id, "name": self.tool_names.get(item.name, item.name), "input": {}}

    def _held_back(self, key: Key) -> bool:
        """A call waits while another call's block is open (its arguments may still come).

        Most of the time its events already waited (``_item_event``); this is for a call
        next to one at slot -1, which holds nothing up, and for the calls placed at the end.
        Not behind text: a server that sends more text for an earlier item after a call
        gets it in a block after the call (blocks cannot reopen, and holding calls back
        behind text that may never finish would put them out of place or lose them at a
        stop string); the JSON answer has that text whole, before the call.

        Nor ahead of an earlier call still held whole (arguments not yet a streamable object,
        RESPONSES.md 7.8): the calls keep the upstream's order, as in the JSON answer.
        """
        if self.open is not None and self.open.kind == "tool_use" and self.open.key != key:
            return True
        if self.ending or key[1] == -1:  # the end places what waits; slot -1 has no place in the order
            return False
        first = self._first_unclosed_call()
        return first is not None and first != key[1]

    def _first_unclosed_call(self) -> Any:
        """The slot of the first call in output order whose block is not closed, or None."""
        if self.order is None:
            self.order, self.order_closed = self._call_order(), 0
        while self.order_closed < len(self.order):
            slot = self.order[self.order_closed]
            if self.items[slot].kind == "function_call" and ("f", slot) not in self.closed:
                return slot
            self.order_closed += 1  # closed for good (or no call): never looked at again
        return None

    def _call_order(self) -> List[Any]:
        """The slots in output order: indexes sorted, then item ids as first mentioned; not -1,
        which may be several items run together."""
        indexes = sorted(k for k in self.items if isinstance(k, int) and k >= 0)
        return indexes + [k for k in self.items if isinstance(k, str)]

    def _waiting_calls(self) -> List[Event]:
        """The calls that waited for another call's block, in their order, once it ended: done ones
        whole, the first still streaming live. One pass: a call it places does not start another
        (which, call after call, went as deep as there were calls)."""
        if self.draining:
            return []
        events: List[Event] = []
        self.draining = True
        try:
            for index in self._call_order():
                item, key = self.items[index], ("f", index)
                if item.kind != "function_call" or key in self.closed or self.open is not None:
                    continue
                events += self._call_done(index, item, item.done) if item.done is not None else self._maybe_live(index, item)
        finally:
            self.draining = False
        return events

    def _claim_tool_id(self, base: str) -> str:
        """A tool id not used in this message or conversation yet, suffixed as ``response.unique_tool_ids`` does."""
        tool_id = first_free(base, self.tool_ids.__contains__, self.tool_ids)
        self.tool_ids.add(tool_id)
        self.has_tools = True
        return tool_id

    def _args_delta(self, obj: Dict[str, Any]) -> List[Event]:
        slot = self._slot(obj)
        item = self._item_at(slot, "function_call")
        item.args.add(text_field(obj, "delta"))
        return self._maybe_live(slot, item)

    def _args_done(self, obj: Dict[str, Any]) -> List[Event]:
        slot = self._slot(obj)
        item = self._item_at(slot, "function_call")
        item.name = item.name or text_field(obj, "name")
        self._take_whole(item, obj.get("arguments"))  # deltas may be missing: arguments only here
        events = self._maybe_live(slot, item)
        if self._is_open(("f", slot)):
            # The arguments are whole: the block ends here, and the items waiting behind it go on.
            events += self._close() + self._waiting_calls()
        return events

    @staticmethod
    def _take_whole(item: _Item, full: Any) -> None:
        """A closing event's whole arguments: what they say past the deltas' is added, when they
        begin with those. Arguments let go (``LiveText``) are compared by digest.

        A skimmed repeat (``skim.Repeat``) let its start go as a live call's. It begins with these
        arguments when it matched whole at their length; a live call's are known at their length,
        so no match is no beginning. Any other call was not open when the line was read
        (``line_skimmer``): one it first names, whose arguments repeat a live call's, cannot be
        told, and an error is better than a call run with the wrong input."""
        have = len(item.args)
        if isinstance(full, dict):
            full = arguments_text(full)
        if isinstance(full, Repeat):
            if full.matches.get(have) == item.args.digest():
                item.args.add(full.after(have))
            elif item.args.whole:
                raise UpstreamUnavailable("upstream's closing event names a call whose arguments repeat another "
                                          "call's; they cannot be told")
        elif isinstance(full, str) and len(full) > have:
            begins = full.startswith(item.args.text()) if item.args.whole else \
                text_digest(full[:have]) == item.args.digest()
            if begins:
                item.args.add(full[have:])

    def _call_done(self, index: Any, item: _Item, raw: Dict[str, Any]) -> List[Event]:
        item.call_id = item.call_id or text_field(raw, "call_id")
        item.name = item.name or text_field(raw, "name")
        self._take_whole(item, raw.get("arguments"))
        key = ("f", index)
        if key not in self.closed and not self._is_open(key) and self._held_back(key):
            item.done = raw  # calls interleaved by the server: placed when the open one ends
            return []
        events = self._maybe_live(index, item)
        if self._is_open(key):
            return events + self._close() + self._waiting_calls()
        if key in self.closed:
            return events  # cut off by another block: nothing more can be placed
        if not item.name:  # no tool can answer it (PROTOCOL.md 2.2): dropped, as in the JSON answer
            self.closed.add(key)
            return events + self._waiting_calls()
        # Not live (arguments not an object, or no id/name until now): the whole call at once. Its
        # text is all held: only an open block lets go of it (_maybe_live).
        start = self._tool_start(item)
        obj = tool_input(item.args.text(), self.incomplete or item.cut_short)  # whole members of a cut call
        self.out_chars += len(item.args)
        self.closed.add(key)
        return events + self._whole_block({**start, "input": obj}) + self._waiting_calls()  # the calls after it

    # ------------------------------------------------------------------
    # Web search: the call, then its results, once the item is done.

    def _search_done(self, index: Any, item: _Item, raw: Dict[str, Any]) -> List[Event]:
        events: List[Event] = []
        self.searches += searched(raw)
        for block in search_blocks(raw, self.new_id, self.secrets):
            events += self._whole_block(block)
        return events

    # ------------------------------------------------------------------
    # The end.

    def _completed(self, obj: Dict[str, Any]) -> List[Event]:
        response = _dict(obj.get("response"))
        status = self._terminal_status(obj, response)
        output = response.get("output")
        details = response.get("incomplete_details")
        # A call cut by the output limit though the server said completed: by the final object's
        # last call where it lists calls (before anything is placed from it); where it does not, or
        # its last call shows no cut, by the stream's own last call once everything is placed.
        said_incomplete = self.incomplete
        final_calls = isinstance(output, list) and any(isinstance(i, dict) and i.get("type") == "function_call"
                                                       for i in output)
        cut_call = last_call_cut(output) if final_calls and not said_incomplete else None
        if cut_call is not None:
            self.incomplete = True  # what is placed from here on keeps a cut call's whole members
        events = self._finish_holders(output)
        events += self._unseen_items(output)
        if self.done:
            return events  # ended at a client stop string in text only the final object had
        events += self._close()
        self.ending = True  # a call that never ended holds no later one back any more
        placed = self._waiting_calls()
        while placed:  # each call left waiting, in turn: the last one live is closed before the next
            events += placed + self._close()
            placed = self._waiting_calls()
        if cut_call is None and not said_incomplete:
            # (A final object whose last call has no arguments or name does not undo a cut the
            # stream showed: that call's half a file went out already.)
            cut_call = self._last_call_cut()
        if cut_call is not None:
            log.warning("%s", said_done_but_cut(f"status {status!r}", cut_call))
            status, details = "incomplete", {"reason": "max_output_tokens"}
        reason = stop_reason_for(status, details, self.has_tools, self.refusal)
        usage = response.get("usage")
        reported = reports_usage(usage)
        if reported:
            final = usage_from(usage, self.searches)
        else:  # a compatible server without usage: the estimate, like on Chat Completions
            final = usage_from({"input_tokens": self.input_tokens, "output_tokens": math.ceil(self.out_chars / 4)}, self.searches)
        # The record's usage: an estimate is no count to bill by ({}: not known).
        self.stop_reason, self.usage = reason, final if reported else {}
        return events + self._ending(reason, final)

    def _last_call_cut(self) -> Optional[str]:
        """The name of the stream's last named call, in output order, when it was cut short."""
        calls = [self.items[slot] for slot in self._call_order()
                 if self.items[slot].kind == "function_call" and self.items[slot].name]
        return calls[-1].name if calls and calls[-1].cut_short else None

    def _terminal_status(self, obj: Dict[str, Any], response: Dict[str, Any]) -> Any:
        status = response.get("status") or ("incomplete" if obj.get("type") == "response.incomplete" else "completed")
        self.incomplete = status == "incomplete"
        return status

    def _finish_holders(self, output: Any) -> List[Event]:
        """At the terminal event: the block other items wait behind (``_holder``) is finished from
        the final object (a call's arguments, a reasoning item's blob) and closed, then what waited
        goes out; again while what went out opened another such block."""
        events = self._release()
        holder = self._holder()
        while holder is not None and not self.done:
            raw = self._final_item(holder, output)
            events += self._unfinished(holder, raw) if raw is not None else []
            if self._holder() == holder:
                events += self._close()  # nothing in the final object finished it
            events += self._release()
            holder = self._holder()
        return events

    def _final_item(self, slot: Any, output: Any) -> Optional[Dict[str, Any]]:
        """The final object's item the stream spoke of under ``slot``, or None."""
        for position, raw in enumerate(output if isinstance(output, list) else ()):
            if isinstance(raw, dict) and self._seen_slot(position, raw) == slot:
                return raw
        return None

    def _unseen_items(self, output: Any) -> List[Event]:
        """The final object's items: the ones the stream never mentioned (servers that send only
        the final object) placed whole, the ones it left unfinished finished (``_unfinished``).

        Events that named neither ``output_index`` nor an item id (slot -1) cannot be told apart:
        an item of a kind they were about may be theirs and is not placed again; the others
        (a call after unindexed text, say) could not have been among them.
        """
        events: List[Event] = []
        unindexed = self.items[-1].kinds if -1 in self.items else set()
        for index, raw in enumerate(output if isinstance(output, list) else ()):
            if self.done:
                break  # a stop string in text the final object filled in ended the answer
            if not isinstance(raw, dict):
                continue
            slot = self._seen_slot(index, raw)
            if slot is not None:
                events += self._unfinished(slot, raw)
            elif raw.get("type") not in unindexed:
                events += self._place_whole(raw)
        return events

    def _place_whole(self, raw: Dict[str, Any]) -> List[Event]:
        """An item only the final object has, as the JSON answer gives it."""
        if raw.get("type") == "function_call" and holds_repeat(raw):
            # Its arguments began with a streamed call's, which were let go: it cannot be placed,
            # and placing it without them would be a call with the wrong input.
            raise UpstreamUnavailable("upstream's final object holds an item it never streamed whose text "
                                      "repeats a streamed call's arguments; it cannot be placed")
        events: List[Event] = []
        blocks, refusal = item_blocks(raw, self.tool_names, self.new_id, self.incomplete, self.thinking, self.secrets)
        self.refusal = self.refusal or refusal
        self.searches += searched(raw)
        for block in blocks:
            if block["type"] == "tool_use":
                block["id"] = self._claim_tool_id(block["id"])
            events += self._whole_block(block)
        return events

    def _seen_slot(self, position: int, raw: Dict[str, Any]) -> Any:
        """The slot under which the stream spoke of the final object's item at ``position``, or
        None: by its id, else by its position (events with ``output_index``), else a call by its
        ``call_id``."""
        item_id = text_field(raw, "id")
        if item_id in self.slots:
            return self.slots[item_id]
        if position in self.items:
            return position
        call_id = text_field(raw, "call_id")
        return next((slot for slot, item in self.items.items() if call_id and item.call_id == call_id), None)

    def _unfinished(self, slot: Any, raw: Dict[str, Any]) -> List[Event]:
        """An item the stream spoke of but never finished (no ``output_item.done``), finished from
        the final object as that ``.done`` would have: a reasoning item's blob, a message's text
        the deltas missed (none: ``.added`` alone), a search, a call whose ``call_id`` is only
        here (LM Studio style). What went out already does not go out again."""
        item = self.items[slot]
        if item.complete or raw.get("type") != item.kind:
            return []
        return self._finish(slot, item, raw)

    def _ending(self, reason: str, usage: Dict[str, Any], sequence: Optional[str] = None) -> List[Event]:
        events = self.start() + self._close()
        self.done = self.complete = True
        delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage}
        return events + [delta, {"type": "message_stop"}]

    def _failed(self, obj: Dict[str, Any]) -> List[Event]:
        self.complete = True
        response = _dict(obj.get("response"))
        self._take_usage(response)  # a failure that was billed says what it cost
        raise failure_of({**response, "status": "failed"}, self.secrets) or error_for({}, self.secrets)

    def _take_usage(self, response: Dict[str, Any]) -> None:
        """The call record's usage from a response snapshot that carries one, as soon as it comes: the
        stream may yet be cut short (usage is null until the end on OpenAI; a failure may carry it)."""
        usage = response.get("usage")
        if reports_usage(usage):
            self.usage = usage_from(usage, self.searches)  # {} or no count at all says nothing: still unknown

    def _error(self, obj: Dict[str, Any]) -> List[Event]:
        self.complete = True
        raise error_for(obj, self.secrets)

    def _created(self, obj: Dict[str, Any]) -> List[Event]:
        response = _dict(obj.get("response"))
        self._take_usage(response)
        return []


class LocalStopResponsesFold(ResponsesFold):
    """A ``ResponsesFold`` that ends the answer at the client's stop strings (the API takes none).

    Answer text that may begin a stop string is held back (``held``, of the text part
    ``held_key``) until the next delta decides, so a string split across deltas still
    matches; it goes out before anything else does (``_close``). At a match the text
    before it goes out, the message ends with stop_reason ``stop_sequence`` and the fold
    is complete: the relay stops reading, and nothing the upstream sends after it is
    the answer. A subclass, so a request without stop strings pays nothing per event.
    """

    def __init__(self, *, stop_sequences: Tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stops = stop_sequences
        self.stop_scan = StopScan(stop_sequences, ending=stop_sequences)
        self.held = ""
        self.held_key: Key = ()
        self.cut: Optional[str] = None  # the stop string the answer ended at

    def _on_event(self, event: ServerSentEvent) -> List[Event]:
        return [] if self.cut is not None else super()._on_event(event)

    @property
    def cut_short(self) -> bool:
        return self.cut is not None

    def _emit_text(self, key: Key, text: str, refusal: bool) -> List[Event]:
        if self.cut is not None:
            return []
        if refusal or not text:  # a refusal is not answer text: not searched
            return super()._emit_text(key, text, refusal)
        events = self._flush_held() if self.held and key != self.held_key else []  # no match across parts
        self.text_sent.setdefault(key, Growing()).add(text)  # as received: .done fills in the rest only
        self.out_chars += len(text)
        hit, keep = self.stop_scan.scan(self.held, text)
        buffered, self.held = self.held + text, ""
        if hit is not None:
            return events + self._send_text(key, buffered[: hit[0]]) + self._stop_at(key, len(buffered) - hit[0], hit[1])
        events += self._send_text(key, buffered[: len(buffered) - keep])
        self.held, self.held_key = buffered[len(buffered) - keep:], key
        return events

    def _send_text(self, key: Key, text: str) -> List[Event]:
        if not text:
            return []  # no empty blocks (FIELD-NOTES 12)
        events = [] if self._is_open(key) else self._open(key, "text", {"type": "text", "text": ""})
        return events + [self._delta({"type": "text_delta", "text": text})]

    def _flush_held(self) -> List[Event]:
        """Held text that turned out not to begin a stop string: it goes out, in its own part's block."""
        held, self.held = self.held, ""
        return self._send_text(self.held_key, held)

    def _close(self) -> List[Event]:
        events = self._flush_held() if self.held else []
        return events + super()._close()

    def _stop_at(self, key: Key, unsent: int, sequence: str) -> List[Event]:
        """End the message at ``sequence``; the last ``unsent`` characters received for ``key`` are not sent."""
        whole = self._sent(key)
        sent = whole[: len(whole) - unsent]
        self.text_sent[key] = Growing(sent)  # the block's citations are those of the text sent
        self.annotations[key] = cited_before(self.annotations.get(key), len(sent))
        return self._end_at_stop(sequence, None)

    def _end_at_stop(self, sequence: str, usage: Any) -> List[Event]:
        """message_delta and message_stop for an answer ended at ``sequence``; usage as far as known."""
        self.cut = sequence
        reported = reports_usage(usage)
        if not reported:
            usage = {"input_tokens": self.input_tokens, "output_tokens": math.ceil(self.out_chars / 4)}
        reason = cut_stop_reason(self.has_tools, self.refusal)
        final = usage_from(usage, self.searches)
        self.stop_reason, self.usage = reason, final if reported else {}  # an estimate: not known
        return self._ending(reason, final, sequence if reason == "stop_sequence" else None)

    def _completed(self, obj: Dict[str, Any]) -> List[Event]:
        """A server that sends only the final object: the stop string may be in an item not streamed."""
        response = _dict(obj.get("response"))
        output, match = cut_output(response.get("output"), self.stops)
        if match is None or -1 in self.items or self._seen_slot(len(output) - 1, output[-1]) is not None:
            return super()._completed(obj)
        self._terminal_status(obj, response)
        events = self._finish_holders(output)
        events += self._unseen_items(output)
        return events + ([] if self.done else self._end_at_stop(match, response.get("usage")))


_HANDLERS = {
    "response.created": "_created",
    "response.in_progress": "_created",
    "response.queued": "_created",
    "response.output_item.added": "_item_added",
    "response.output_item.done": "_item_done",
    "response.content_part.done": "_part_done",
    "response.output_text.delta": "_text_delta",
    "response.output_text.done": "_text_done",
    "response.output_text.annotation.added": "_annotation",
    "response.output_text_annotation.added": "_annotation",  # the SDK's spelling
    "response.refusal.delta": "_refusal_delta",
    "response.refusal.done": "_refusal_done",
    "response.function_call_arguments.delta": "_args_delta",
    "response.function_call_arguments.done": "_args_done",
    "response.reasoning_summary_text.delta": "_summary_delta",
    "response.reasoning_summary_text.done": "_summary_done",
    "response.reasoning_text.delta": "_reasoning_text_delta",
    "response.reasoning_text.done": "_reasoning_text_done",
    "response.completed": "_completed",
    "response.incomplete": "_completed",
    "response.failed": "_failed",
    "error": "_error",
}


# The most event data that waits behind one item's open block before that block is closed: a
# stream is relayed as it comes, held only as long as one call's arguments or one reasoning item take.
MAX_HELD_BYTES = 4 * 1024 * 1024

# The events about one output item: they may wait behind another item's block (_item_event).
_ITEM_HANDLERS = frozenset(h for h in _HANDLERS.values() if h not in ("_created", "_completed", "_failed", "_error"))


def _index(obj: Dict[str, Any], key: str) -> int:
    """A part's position (content_index, summary_index); missing or not a number, 0 (compatible
    servers omit it; their ``.done`` items list the one part first)."""
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _dict(value: Any) -> Dict[str, Any]:
    return value if isinstance(value, dict) else {}


