"""OpenAI chat-completion chunks -> Anthropic stream events (PROTOCOL.md section 3).

Sans-io: ``StreamTranslator`` takes parsed chunks and returns the exact event
payloads to write, in order; it never reads a socket or a clock. All state of
one stream lives in one instance (no class-level mutable attributes), so
concurrent streams cannot disturb each other.

The grammar it guarantees: ``message_start``, then blocks with indexes 0..n in
emission order, each started before its deltas and stopped once, one open at a
time, then one ``message_delta`` and ``message_stop`` -- or, after a failure,
exactly one ``error`` and nothing more.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from typing import Any, Dict, FrozenSet, List, Optional, Set, Tuple

from ...cost import billed_cost
from ...errors import (
    ProxyError,
    UpstreamUnavailable,
    error_from_object,
    stream_error_event,
)
from ...ids import first_free
from ...replies import as_answered, events_for_message, message_start
from ...signatures import encode_signature
from ...skim import text_digest
from ...sse import ServerSentEvent, SSEDecoder, SSEFold, is_done, loads_data
from ..growing import Growing
from ..stops import StopScan
from ..names import client_tool_id, own_tool_id
from ..toolargs import KEEP_LIVE_TEXT, TURNED_BAD, ArgsScan, cut_short, normalize_arguments, said_done_but_cut
from .response import (
    CUT_FINISH_REASONS,
    IdFactory,
    called_nothing,
    match_stop_sequence,
    message_from_body,
    overload_error,
    stop_reason_for,
    usage_from,
)
from .wire import ChatChoice, ChatResponse, ChatUsage, ToolCallDelta, parse_chat_chunk, reports_usage

log = logging.getLogger(__name__)
Event = Dict[str, Any]
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


_DECODER = json.JSONDecoder()  # raw_decode: a value and where it ends (no state between calls)


def _first_object(text: str) -> Any:
    """The JSON object ``text`` begins with (whatever follows it), or None."""
    try:
        return _DECODER.raw_decode(text, len(text) - len(text.lstrip()))[0]
    except (ValueError, RecursionError):
        return None


_OBJECT_START_RE = re.compile(r"\s*\{")


def _digest(text: str) -> Any:
    """A running SHA-256 of ``text``, which later fragments update (``skim.text_digest``'s encoding)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass"))


@dataclasses.dataclass
class _Tool:
    """One tool call being assembled from fragments."""

    order: int
    index: Optional[int] = None
    id: str = ""
    name: str = ""
    live: bool = False  # its block was started and its fragments are streamed
    block: Optional[int] = None
    shown: str = ""  # the id the client sees, once its block starts (``id`` stays the upstream's)
    thought_signature: Optional[str] = None
    # The arguments as they grew (a str += per fragment is quadratic), and their length.
    text: Growing = dataclasses.field(default_factory=Growing)
    size: int = 0
    # Instead of ``text`` (then emptied) once a live call's arguments passed KEEP_LIVE_TEXT:
    # their SHA-256; ``size`` still counts them all.
    digest: Any = None
    # Whether the arguments closed, and what of them may be streamed (``_parses`` on the growing
    # buffer after every fragment would be quadratic: RELIABILITY.md F10).
    scan: ArgsScan = dataclasses.field(default_factory=ArgsScan)
    # A fragment named this tool again, with no arguments, after they closed: the head of another
    # call to the same tool, or a repeat; the arguments that follow tell (``ended_before``).
    named_again: bool = False
    # Split off at a reused index without an id (``ended_before``): a call resent in pieces looks
    # like another at first; one that repeats an earlier call is dropped at the end (``_kept_calls``).
    split_off: bool = False

    @property
    def args(self) -> str:
        """The arguments' text (never asked of a live call, which may have let it go)."""
        return self.text.text()

    def add_fragment(self, fragment: Optional[str]) -> str:
        """Merge one arguments fragment; return the text newly appended."""
        if not fragment:
            return ""
        if self.size:
            if len(fragment) == self.size and self._repeats(fragment):
                return ""  # a final chunk repeating the whole arguments
            if _OBJECT_START_RE.match(fragment) and self._same_object(fragment):
                return ""  # the same, reformatted
            # Cumulative snapshots (FIELD-NOTES 19): keep only the new suffix. A fragment that
            # repeats a buffer of 2+ characters, or a lone "{" ("{{" is never JSON), is one.
            old = self.size
            if len(fragment) > old and self._repeats(fragment) and (
                old >= 2 or fragment[0] == "{" or _parses(fragment)
            ):
                self.text, self.size, self.digest = Growing(fragment), len(fragment), None
                self.bound()
                return self._scanned(fragment[old:])
        self.size += len(fragment)
        if self.digest is not None:
            self.digest.update(fragment.encode("utf-8", "surrogatepass"))
        else:
            self.text.add(fragment)
            self.bound()
        return self._scanned(fragment)

    def ended_before(self, name: Optional[str], arguments: Optional[str]) -> bool:
        """Does a fragment with no id, at this call's index, begin another call? Only once these
        arguments closed as a whole object (a server that sends every call at index 0 without
        ids: FIELD-NOTES 1; the next call was dropped as text after a closed object), and then
        when it names another tool, or begins another object for this tool, named in it or in a
        fragment of its own just before (``named_again``): two reads of two files. The same
        object again (a repeat, reformatted, a snapshot, trailing junk) stays this call's: one
        call sent twice cannot be told from two calls alike, and running a tool twice is worse
        than missing a call."""
        if not (self.scan.closed and self.name):
            return False
        if name and name != self.name:
            return True
        return bool((name or self.named_again) and arguments and _OBJECT_START_RE.match(arguments)
                    and self._another_object(arguments))

    def key(self) -> Any:
        """What tells this call from another of its tool: its arguments' object as canonical JSON
        (``true`` is no ``1``), repaired as the client would get it where they were cut; past
        KEEP_LIVE_TEXT their digest (a live call's text is let go there). None without a name."""
        if not self.name:
            return None
        if self.digest is not None:
            return self.name, self.size, self.digest.digest()
        text = self.args
        if self.size > KEEP_LIVE_TEXT:
            return self.name, self.size, text_digest(text)
        obj = _first_object(text) if self.whole else normalize_arguments(text, True)[0]
        return self.name, json.dumps(obj, sort_keys=True, ensure_ascii=False)

    def _another_object(self, fragment: str) -> bool:
        """``fragment`` begins an object that is not these arguments again (``add_fragment``'s repeats)."""
        if self.digest is not None:
            return False  # the text was let go and cannot be compared: taken for a repeat, as before
        args = self.args
        if fragment.startswith(args):
            return False  # a snapshot of the arguments, or junk after them
        return not (_parses(fragment) and json.loads(fragment) == _first_object(args))

    def _repeats(self, fragment: str) -> bool:
        """``fragment`` begins with all the arguments so far."""
        if self.digest is None:
            return fragment.startswith(self.args)
        return len(fragment) >= self.size and text_digest(fragment[:self.size]) == self.digest.digest()

    def bound(self) -> None:
        """A live call's text past KEEP_LIVE_TEXT: only its digest is kept."""
        if self.live and self.size > KEEP_LIVE_TEXT:
            self.digest, self.text = _digest(self.args), Growing()

    def _same_object(self, fragment: str) -> bool:
        if not self.scan.closed:
            return False  # the buffer is not a complete object yet: nothing to repeat
        if self.digest is not None:
            # The text was let go and cannot be compared; the object closed, so nothing after it
            # is the call's: a whole object now is taken for the repeat it almost surely is (not
            # counted as output), and its scan passes nothing more on either way.
            return _parses(fragment)
        if not _parses(fragment):
            return False
        buf = self.args
        return _parses(buf) and json.loads(buf) == json.loads(fragment)

    def _scanned(self, added: str) -> str:
        self.scan.feed(added)
        return added

    @property
    def starts_object(self) -> bool:
        """The first non-blank argument character is ``{``."""
        if self.digest is not None:
            return True  # only a live call lets its text go, and a call goes live on a "{"
        return _OBJECT_START_RE.match(self.args) is not None

    @property
    def whole(self) -> bool:
        """The arguments are one JSON object that has closed (the scan kept per fragment says so:
        nothing is parsed again). False for none at all, or an object the stream cut off."""
        return self.scan.closed and self.starts_object

    @property
    def cut_short(self) -> bool:
        """The arguments stop inside a string, or where no value could end (``toolargs.cut_short``).
        A live call past KEEP_LIVE_TEXT let its text go: still open then, it was cut (no small
        model's missing brace comes after 64 KB of arguments)."""
        if self.digest is None:
            return cut_short(self.args)
        return self.scan.left_open


class _ThinkTags:
    """Splits ``<think>...</think>`` at the start of content into reasoning (think_tags dialects).

    The result equals the non-streaming ``split_think_tags``: whitespace just inside
    the tags and right after ``</think>`` is dropped, so a stream and a JSON answer
    give the same blocks (PROTOCOL.md case 67). Text that could still be the start
    of a tag, or trailing whitespace inside the tags, is held until it is decided.
    """

    def __init__(self) -> None:
        self.state = "detect"  # detect -> think -> after -> text
        self.held = ""
        # Blank deltas that came while all that was held was blank: they follow ``held``. Kept
        # apart, so a model that loops on newlines does not make every delta re-strip all of
        # them (80,000 such deltas took 23 s).
        self.blank: List[str] = []
        self.began = False  # the first non-blank reasoning character was seen

    def split(self, text: str) -> Tuple[str, str]:
        """(reasoning, text) that can be emitted now."""
        if self.state in ("detect", "think") and text.isspace() and (not self.held or self.held.isspace()):
            self.blank.append(text)  # blank after blank: nothing can be decided or sent
            return "", ""
        if self.blank:
            text, self.blank = "".join(self.blank) + text, []
        self.held += text
        if self.state == "detect":
            stripped = self.held.lstrip()
            if _THINK_OPEN.startswith(stripped):
                return "", ""  # could still become <think>
            if stripped.startswith(_THINK_OPEN):
                self.state, self.held = "think", stripped[len(_THINK_OPEN):]
            else:
                self.state = "text"
        reasoning = self._inside() if self.state == "think" else ""
        if self.state == "after":
            self.held = self.held.lstrip()
            self.state = "text" if self.held else "after"
        if self.state != "text":
            return reasoning, ""
        out, self.held = self.held, ""
        return reasoning, out

    def _inside(self) -> str:
        """Reasoning that is safe to emit; moves to ``after`` at ``</think>``."""
        if not self.began:
            self.held = self.held.lstrip()
            self.began = bool(self.held)
        inside, sep, rest = self.held.partition(_THINK_CLOSE)
        if sep:
            self.state, self.held = "after", rest
            return inside.rstrip()
        # Keep what may be the start of </think>, and trailing whitespace (it may end the block).
        cut = max(0, len(self.held) - (len(_THINK_CLOSE) - 1))
        out = self.held[:cut].rstrip()
        self.held = self.held[len(out):]
        return out

    def flush(self) -> Tuple[str, str]:
        held, self.held, self.blank = self.held + "".join(self.blank), "", []
        if self.state == "think":  # no </think>: what began the reasoning went out, its blanks with it
            return held.rstrip() if self.began else "", ""
        if self.state == "after" or held.lstrip() == _THINK_OPEN:  # a bare <think> at the end: no text
            return "", ""
        return "", held


class StreamTranslator:
    """Feed it chunks; write what it returns. See the module docstring for the grammar."""

    def __init__(
        self,
        *,
        message_id: str,
        model: str,
        input_tokens: int,
        new_id: IdFactory,
        tool_names: Optional[Dict[str, str]] = None,
        stop_sequences: Tuple[str, ...] = (),
        dialect_name: str = "generic",
        think_tags: bool = False,
        secrets: Tuple[str, ...] = (),
        thinking: bool = True,
        usage_chunk_asked: bool = True,
        history: FrozenSet[str] = frozenset(),
        hold_calls: bool = False,
    ) -> None:
        self.message_id = message_id
        self.history = history  # the conversation's tool ids (``tool_use_ids``): no call may repeat one
        self.hold_calls = hold_calls  # every call whole at the end, after the block carrying their state
        self.model = model
        self.input_tokens = input_tokens
        self.new_id = new_id
        self.tool_names = tool_names or {}
        self.stop_sequences = stop_sequences
        self.local_stops: Tuple[str, ...] = ()  # matched by the proxy: LocalStopTranslator
        # Text that may begin a stop string is held back (2.4 rule 5b); a local one ends the answer
        # (LocalStopTranslator). Built at the first text that needs it, once.
        self.stop_scan: Optional[StopScan] = None
        self.dialect_name = dialect_name
        self.secrets = secrets
        self.think = _ThinkTags() if think_tags else None
        self.thinking = thinking  # the client asked for it (wants_thinking): else reasoning is left out
        self.started = False
        self.done = False  # message_stop or error written
        self.next_index = 0
        self.open_kind: Optional[str] = None  # "thinking" | "text" | "tool"
        self.open_index = -1
        self.tools: List[_Tool] = []
        self.live: Optional[_Tool] = None
        self.waiting: Optional[_Tool] = None  # the first call, its "{" in: the next character decides if it goes live
        self.finish_reason: Optional[str] = None
        self.matched_stop: Optional[str] = None
        self.usage: Optional[ChatUsage] = None
        self.usage_on_content = False  # a content chunk carried a usage (vLLM's continuous usage stats)
        # The usage known came on the finish chunk of such a stream: a running count, which may still
        # lack what the stream's last, usage-only chunk adds (the cached tokens), so it does not end
        # the stream by itself (``ready_to_finish``).
        self.usage_running = False
        # The request asked for a usage-only chunk at the end (stream_options.include_usage). Only then
        # is one worth waiting for: a server asked for none (Mistral) may hold the connection after its
        # finish chunk, and its client would wait the whole finish grace (PROTOCOL.md case 57).
        self.usage_chunk_asked = usage_chunk_asked
        self.out_chars = 0
        self.held_text = ""  # may be a stop sequence left in the text (2.4 rule 5b): finish strips it
        self.stop_match: Optional[str] = None
        self.deferred: List[Tuple[str, str]] = []  # text/reasoning that came while the live tool was open
        self.refusal = False
        self.state: Dict[str, Any] = {}
        self.carried: Dict[str, Any] = {}
        # Set by finish(), for metrics (``usage_so_far`` also knows the usage of a stream cut short).
        self.stop_reason: Optional[str] = None
        self.final_usage: Dict[str, Any] = {}
        self.usage_in_json = False  # a whole JSON answer (``ChatFold.from_json``) reported its usage

    # ------------------------------------------------------------------
    # Public interface.

    def start(self) -> List[Event]:
        """``message_start`` (once)."""
        if self.started:
            return []
        self.started = True
        return [message_start(self.message_id, self.model, self.input_tokens)]

    @property
    def usage_so_far(self) -> Dict[str, Any]:
        """The call record's usage: the message's own once it ended; before that (a stream cut short,
        a client gone) the upstream's usage if it came already. {} when the upstream never reported
        one: then the message_delta carried the proxy's estimate, which is no count to bill by."""
        if self.usage is None and not self.usage_in_json:
            return {}
        if self.final_usage:
            return self.final_usage
        return usage_from(self.usage) if self.usage is not None else {}

    @property
    def ready_to_finish(self) -> bool:
        """finish_reason and the final usage are both known: no need to wait for ``[DONE]``.

        A running count (``usage_running``) is not the final usage: the stream then ends as one
        whose finish came without usage does -- at the usage-only chunk, ``[DONE]``, the body's end
        or the relay's finish grace, whichever comes first -- and with the last usage read. A
        finish chunk carrying the stream's only usage (Mistral, Moonshot) still ends it at once."""
        return self.finish_reason is not None and self.usage is not None and not self.usage_running

    @property
    def has_finish_reason(self) -> bool:
        return self.finish_reason is not None

    @property
    def cut_in_tool_arguments(self) -> bool:
        """A tool call's arguments are not a whole JSON object yet: a stream ending here was cut."""
        return any(t.name and not t.whole for t in self.tools)

    @property
    def takes_plain_text(self) -> bool:
        """``plain_text`` gives exactly what ``feed`` would (after message_start, without think tags)."""
        return self.started and self.think is None

    def plain_text(self, text: str) -> List[Event]:
        """Events for a chunk that carries only ``text`` (``plain_text_delta``): ``feed`` without the parsing."""
        if self.open_kind == "text" and not self.deferred and not self.stop_sequences:
            # Most chunks of an answer: its text block is open and nothing is held back, so
            # the chunk is one delta (what _emit_text gives then, without its steps).
            self.out_chars += len(text)
            return [{"type": "content_block_delta", "index": self.open_index, "delta": {"type": "text_delta", "text": text}}]
        return self._emit_text(text)

    def feed(self, chunk: ChatResponse) -> List[Event]:
        """Events for one upstream chunk. Raises ``ProxyError`` for an error object."""
        if chunk.error is not None:
            raise error_from_object(chunk.error, self.secrets)
        choice = chunk.choice
        if chunk.usage is not None:
            self.usage = chunk.usage
            in_answer = choice is not None and self.finish_reason is None
            if in_answer and choice.finish_reason is None:  # type: ignore[union-attr]
                self.usage_on_content = True
            # Once a chunk before the finish carried a usage, a usage in the answer's chunks (the finish
            # one too) is a running count, and it stays so while the finish chunk brings none; after
            # the finish, or alone (the include_usage chunk: choices []), a usage is the final one.
            self.usage_running = in_answer and self.usage_on_content and self.usage_chunk_asked
        if choice is None:
            return []
        was_started = self.started
        events = self._reasoning(choice)
        events += self._content(choice)
        for call in choice.tool_calls:
            events += self._tool_fragment(call)
        if events and not was_started:
            # message_start comes with the first content, not with a chunk that carries none (the
            # role-only chunk OpenAI and most servers send first): until then nothing has gone to the
            # client, and an error that follows is still a plain HTTP error the proxy may retry or
            # fall back from. A slow first token commits at the first ping (relay.tick).
            events = self.start() + events
        overload = overload_error(choice.finish_reason, self.secrets, chunk.choice_error)  # "error" too
        if overload is not None:
            # What came so far goes out, then the error. Nothing at all: a plain 529 before the
            # stream began, which the proxy can still retry.
            overload.events_before = tuple(events) if was_started or events else ()
            raise overload
        if choice.finish_reason is not None:
            self.finish_reason = choice.finish_reason
        if choice.matched_stop is not None:
            self.matched_stop = choice.matched_stop
        return events

    def _flush_pending(self) -> List[Event]:
        """``message_start`` if not yet sent, then what waited for the end: text held in think tags,
        text deferred behind a tool call. Once flushed there is nothing left, so it may run twice."""
        events = self.start()
        self.waiting = None  # the stream ends: a call still undecided never goes live
        if self.think is not None:
            reasoning, text = self.think.flush()
            events += self._emit_reasoning(reasoning) + self._emit_text(text)
        return events + self._release()

    def finish(self) -> List[Event]:
        """Close everything and end the message (``message_delta``, ``message_stop``)."""
        if self.done:
            return []
        events = self._flush_pending()
        nothing = called_nothing(self.finish_reason, any(t.name for t in self.tools), self.next_index > 0)
        if nothing is not None:  # as the JSON answer (_malformed_answer): no 200 with nothing in it
            raise UpstreamUnavailable(f"upstream answer is malformed: {nothing}")
        named = [t for t in self.tools if t.name]
        last = max(named, key=lambda t: t.order) if named else None
        if self.finish_reason not in CUT_FINISH_REASONS and last is not None and last.cut_short:
            # As the JSON answer (cut_where_said_whole), by the last call, the one a limit cuts: the
            # client hears max_tokens, as from Anthropic for a call its limit cut, not tool_use for
            # input that is half a file.
            log.warning("%s", said_done_but_cut(f"finish_reason {self.finish_reason!r}", last.name))
            self.finish_reason = "length"
        buffered = self._kept_calls()
        events += self._settle_stop(last_is_text=not buffered)
        for tool in buffered:
            tool.shown = self._unique_id(tool)
        self._update_state_from_tools()
        events += self._close_open()
        events += self._carrier_block()
        cut = buffered[-1] if buffered and self.finish_reason in CUT_FINISH_REASONS else None
        for tool in buffered:
            events += self._whole_tool(tool, cut=tool is cut and tool is max(self.tools, key=lambda t: t.order))
        events += [self._message_delta(), {"type": "message_stop"}]
        self.done = True
        return events

    def error(self, error_type: str, message: str) -> List[Event]:
        """The one terminal ``error`` event for a failure after the stream began."""
        if self.done:
            return []
        self.done = True
        return [stream_error_event(error_type, message)]

    def fail(self, exc: ProxyError) -> List[Event]:
        return self.error(exc.error_type, exc.message)

    # ------------------------------------------------------------------
    # Blocks.

    def _open(self, kind: str, content_block: Dict[str, Any], flush: bool = True) -> List[Event]:
        """A new block, after the open one. ``flush``: send text held back for a stop string first
        (not for the block carrying provider state: the held text belongs after it)."""
        events = self._flush_held() if kind != "text" and flush else []
        events += self._close_open()
        if kind != "thinking":
            # Provider state that came before this block and no thinking block carried (OpenRouter's
            # reasoning_details ahead of the text, unasked) goes in a block before it, as Anthropic's
            # thinking comes first: not after the text and between the calls.
            events += self._carrier_block()
        self.open_kind, self.open_index = kind, self.next_index
        self.next_index += 1
        return events + [{"type": "content_block_start", "index": self.open_index, "content_block": content_block}]

    def _close_open(self) -> List[Event]:
        if self.open_kind is None:
            return []
        events: List[Event] = []
        live = self.live
        if self.open_kind == "tool" and live is not None and live.block == self.open_index:
            rest = live.scan.flush()  # a call cut short: what was held back goes out as it came
            if rest:
                events.append(self._delta({"type": "input_json_delta", "partial_json": rest}))
        elif self.open_kind == "thinking":
            signature = encode_signature(self.dialect_name, _with_details_whole(self.state) or None)
            # A copy of the lists too: the state's grow in place, and must differ from what was carried.
            self.carried = {k: list(v) if isinstance(v, list) else v for k, v in self.state.items()}
            events.append(self._delta({"type": "signature_delta", "signature": signature}))
        events.append({"type": "content_block_stop", "index": self.open_index})
        self.open_kind = None
        return events

    def _delta(self, delta: Dict[str, Any], index: Optional[int] = None) -> Event:
        return {"type": "content_block_delta", "index": self.open_index if index is None else index, "delta": delta}

    def _carrier_block(self) -> List[Event]:
        """Provider state that arrived after the last thinking block closed gets a block of its own."""
        if not self.state or self.state == self.carried:
            return []
        events = self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}, flush=False)
        return events + self._close_open()

    # ------------------------------------------------------------------
    # Reasoning and text.

    def _reasoning(self, choice: ChatChoice) -> List[Event]:
        if choice.reasoning_details:
            # Extended in place: OpenRouter sends a detail with each reasoning delta, and a new list
            # per chunk copied them all every time (80,000 chunks: 12 s).
            self.state.setdefault("reasoning_details", []).extend(choice.reasoning_details)
        return self._emit_reasoning(choice.reasoning)

    def _emit_reasoning(self, text: str) -> List[Event]:
        if not text:
            return []
        if not self.thinking:
            self.out_chars += len(text)  # generated all the same: an output estimate counts it
            return []  # provider state still comes, in a block of its own (_carrier_block)
        if self._blocked():
            self.deferred.append(("thinking", text))
            return []
        events: List[Event] = []
        if self.open_kind != "thinking" or self.held_text:  # held text came first: it goes first
            events += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        self.out_chars += len(text)
        return events + [self._delta({"type": "thinking_delta", "thinking": text})]

    def _content(self, choice: ChatChoice) -> List[Event]:
        text = choice.content
        if choice.refusal:
            self.refusal = True
            text += choice.refusal
        if self.think is None:
            return self._emit_text(text)
        reasoning, text = self.think.split(text)
        if self.think.state == "text" and not self.think.held and not self.think.blank:
            self.think = None  # decided: the rest is text, which the plain-text path takes (review AO 9)
        return self._emit_reasoning(reasoning) + self._emit_text(text)

    def _emit_text(self, text: str) -> List[Event]:
        if not text:
            return []  # the role chunk's content "" opens nothing (FIELD-NOTES 12)
        if self._blocked():
            self.deferred.append(("text", text))
            return []
        if self.stop_sequences:
            self.out_chars += len(text)
            scan = self.stop_scan or self._build_stop_scan()
            hit, keep = scan.scan(self.held_text, text)
            text = self.held_text + text
            if hit is not None:
                return self._at_stop(text, hit)
            text, self.held_text = text[: len(text) - keep], text[len(text) - keep:]
            return self._text_delta(text, count=False)
        return self._text_delta(text)

    def _build_stop_scan(self) -> StopScan:
        self.stop_scan = StopScan(self.stop_sequences + self.local_stops, ending=self.local_stops)
        return self.stop_scan

    def _at_stop(self, text: str, hit: Tuple[int, str]) -> List[Event]:
        """``text`` completed a stop string the proxy matches itself (LocalStopTranslator's only)."""
        raise AssertionError("no stop string is matched here")

    def _text_delta(self, text: str, count: bool = True) -> List[Event]:
        if not text:
            return []
        events: List[Event] = []
        if self.open_kind != "text":
            events += self._open("text", {"type": "text", "text": ""})
        self.out_chars += len(text) if count else 0
        return events + [self._delta({"type": "text_delta", "text": text})]

    def _flush_held(self) -> List[Event]:
        """Held-back text turned out not to end the message: send it."""
        held, self.held_text = self.held_text, ""
        return self._text_delta(held, count=False)

    def _blocked(self) -> bool:
        """The live tool's JSON is still open: a new block now would cut it off for good. Or the
        first call's arguments began with ``{`` and their next character decides whether it goes
        live (``waiting``): text waits for that as it would behind the live call."""
        return bool(self.deferred) or self.waiting is not None or (
            self.open_kind == "tool" and self.live is not None and not self.live.scan.ended
        )

    def _release(self) -> List[Event]:
        """Deferred text/reasoning, once the live tool is complete (or the stream ends)."""
        if not self.deferred:
            return []
        deferred, self.deferred = self.deferred, []
        events = self._close_open()
        for kind, text in deferred:
            events += self._emit_reasoning(text) if kind == "thinking" else self._emit_text(text)
        return events

    def _settle_stop(self, last_is_text: bool) -> List[Event]:
        """Decide the matched stop sequence (2.4 rule 5); strip it from held text if it ends the message."""
        if self.finish_reason in ("stop", None):
            match, rest = match_stop_sequence(self.held_text, self.matched_stop, self.stop_sequences)
            if match is not None and match == self.matched_stop:
                self.stop_match = match  # vLLM/SGLang named it: the text is left as it is
            elif match is not None and last_is_text:
                self.stop_match, self.held_text = match, rest
        return self._flush_held()

    # ------------------------------------------------------------------
    # Tool calls (PROTOCOL.md 3.4 step 7).

    def _find_tool(self, call: ToolCallDelta) -> _Tool:
        if call.id:
            for tool in self.tools:
                # A known id is the same call (providers repeat it in every fragment),
                # unless both name different indexes: some servers reuse one id for two calls.
                if tool.id == call.id and (call.index is None or tool.index is None or call.index == tool.index):
                    return tool
        if call.index is not None:
            for tool in reversed(self.tools):
                if tool.index == call.index:
                    if call.id and tool.id:
                        break  # same index, new id: a distinct call
                    if not call.id and tool.ended_before(call.name, call.arguments):
                        # No id, but another tool's name, or another object, after this call closed.
                        new = self._new_tool(call.index, tool.name if not call.name else "")
                        new.split_off = True
                        return new
                    blank = not (call.arguments or "").strip()
                    if not call.id and tool.scan.closed and (call.name or not blank):
                        # A name alone after the arguments closed may head another call to this tool:
                        # the next fragment with arguments tells.
                        tool.named_again = call.name == tool.name and blank
                    return tool
            return self._new_tool(call.index)
        last = self.tools[-1] if self.tools else None
        if call.id or last is None:
            return self._new_tool(None)
        # No index and no id: a name starts a call when it is another tool's, or when the last
        # call's arguments closed. Unlike a reused index (``ended_before``), the same tool's name
        # counts too: servers that send no index send each call whole in one fragment, and two
        # reads in one turn are two calls to one tool.
        if call.name and last.name and (call.name != last.name or last.scan.closed):
            return self._new_tool(None)
        return last

    def _kept_calls(self) -> List[_Tool]:
        """The calls still to place, at the end: named, not live, and not a call split off at a
        reused index without an id that repeats an earlier one (``_Tool.key``): that call resent,
        whole or in pieces, after other calls too. Running a tool twice is worse than missing a call."""
        if not any(tool.split_off for tool in self.tools):  # most turns: no call's object is read again
            return [tool for tool in self.tools if not tool.live and tool.name]
        seen: Set[Any] = set()
        kept: List[_Tool] = []
        for tool in self.tools:
            key = tool.key() if tool.name else None
            if tool.split_off and key in seen:
                continue
            seen.add(key)
            if not tool.live and tool.name:
                kept.append(tool)
        return kept

    def _new_tool(self, index: Optional[int], name: str = "") -> _Tool:
        # Only the first call can go live: the others' scans need not collect the text to send.
        tool = _Tool(order=len(self.tools), index=index, name=name, scan=ArgsScan(keep=not self.tools))
        self.tools.append(tool)
        return tool

    def _tool_fragment(self, call: ToolCallDelta) -> List[Event]:
        tool = self._find_tool(call)
        tool.id = tool.id or call.id
        if call.name and tool.name and call.name != tool.name and not tool.live and not tool.size:
            tool.name += call.name  # a name sent in pieces ("Wr", "ite"), as openai-python joins them
        else:
            tool.name = tool.name or call.name  # (most servers repeat the whole name in every fragment)
        if call.thought_signature and tool.thought_signature is None:
            tool.thought_signature = call.thought_signature
        added = tool.add_fragment(call.arguments)
        self.out_chars += len(added)
        if tool.live:
            events = self._live_delta(tool)
        elif tool is not self.tools[0]:
            return []
        elif self._may_go_live(tool):
            self.waiting = None
            events = self._go_live(tool)
        elif tool.name and tool.scan.undecided:
            if self.waiting is tool:
                return []
            # What its block would end as it opens ends now, and what comes next waits for the
            # decision (``_blocked``), as it would behind the live call.
            self.waiting = tool
            return self._flush_held() + self._close_open()
        elif self.waiting is tool:  # decided: no JSON object, it is not live and comes whole at the end
            self.waiting = None
            return self._release()
        else:
            return []
        return events + self._release() if self.deferred and tool.scan.ended else events

    def _may_go_live(self, tool: _Tool) -> bool:
        """Only the turn's first call streams live, and only once its arguments show they are a
        JSON object (``{`` then ``"`` or ``}``) and nothing invalid came yet (``ArgsScan``). Not
        with ``hold_calls`` (Gemini): its calls' thought signatures, which a thinking block before
        them carries, are known only once every call came (Gemini sends each call whole anyway)."""
        return not self.hold_calls and bool(tool.name) and tool.scan.started and not tool.scan.bad

    def _go_live(self, tool: _Tool) -> List[Event]:
        tool.live = True
        tool.bound()  # a large first fragment too
        tool.id = tool.id or "toolu_" + self.new_id()
        tool.shown = self._unique_id(tool)
        events = self._open("tool", self._tool_start(tool))
        tool.block = self.open_index
        self.live = tool
        return events + [self._delta({"type": "input_json_delta", "partial_json": tool.scan.take()})]

    def _live_delta(self, tool: _Tool) -> List[Event]:
        """What the scan passes on: nothing after the object closed; at invalid JSON, the brackets
        that close what was sent (``ArgsScan``), which the log reports."""
        text = tool.scan.take()
        if not text or self.open_kind != "tool" or self.live is not tool:
            return []  # nothing new, or its block was closed by later text: the rest cannot be placed
        if tool.scan.bad:
            log.warning(TURNED_BAD, tool.name, tool.shown)
        return [self._delta({"type": "input_json_delta", "partial_json": text})]

    def _tool_start(self, tool: _Tool) -> Dict[str, Any]:
        name = self.tool_names.get(tool.name, tool.name)
        # tool.id stays the upstream's: later fragments are matched by it.
        return {"type": "tool_use", "id": tool.shown, "name": name, "input": {}}

    def _whole_tool(self, tool: _Tool, cut: bool = False) -> List[Event]:
        """A call placed whole at the end; ``cut``: the answer's last, which the output limit cut
        (its whole members, as in the JSON answer: ``normalize_arguments``)."""
        obj, _ = normalize_arguments(tool.args, cut)
        events = self._open("tool", self._tool_start(tool))
        if obj:
            events.append(self._delta({"type": "input_json_delta", "partial_json": json.dumps(obj, ensure_ascii=False)}))
        return events + self._close_open()

    def _unique_id(self, tool: _Tool) -> str:
        """The id the client sees for ``tool``: the upstream's (``client_tool_id``), suffixed when
        a call of this answer shown already, or of the conversation so far (``history``), has it."""
        taken = {t.shown for t in self.tools if t is not tool and t.shown} | self.history
        base = own_tool_id(tool.id, self.secrets) or "toolu_" + self.new_id()
        return client_tool_id(first_free(base, lambda c: client_tool_id(c) in taken, taken))

    # ------------------------------------------------------------------
    # The end.

    def _message_delta(self) -> Event:
        has_tools = any(t.name for t in self.tools)
        stop_match = self.stop_match
        reason = stop_reason_for(self.finish_reason, has_tools, self.refusal, stop_match)
        if self.usage is not None:
            usage = usage_from(self.usage)
        else:
            usage = usage_from(ChatUsage(prompt_tokens=self.input_tokens))
            usage["output_tokens"] = math.ceil(self.out_chars / 4)
        self.stop_reason = reason
        self.final_usage = usage
        return {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": stop_match if reason == "stop_sequence" else None},
            "usage": usage,
        }

    def _update_state_from_tools(self) -> None:
        sigs = {t.shown: t.thought_signature for t in self.tools if t.thought_signature and t.shown}
        if sigs:
            self.state["ts"] = sigs


class LocalStopTranslator(StreamTranslator):
    """A ``StreamTranslator`` that also ends the answer at the stop strings the upstream was not
    sent (``local_stops``: past the dialect's max_stop, or all where stop is not sent).

    Text that may begin a stop string is held back already (``_emit_text``), so a string split
    across deltas still matches. Once one is complete the text before it goes out, the message
    ends with stop_reason ``stop_sequence`` and ``done`` turns true: what the upstream sends
    after it (more text, tool calls) is not the answer. A subclass, so a request without such
    stop strings pays nothing per chunk.
    """

    def __init__(self, *, local_stops: Tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.local_stops = local_stops
        self.cut: Optional[str] = None  # the local stop string the answer ended at

    def feed(self, chunk: ChatResponse) -> List[Event]:
        return [] if self.done else self._ended(super().feed(chunk))

    def plain_text(self, text: str) -> List[Event]:
        return self._ended(super().plain_text(text))

    def finish(self) -> List[Event]:
        if self.done:
            return []
        # What finish() flushes first (think tags, text deferred behind a tool) may hold the stop;
        # flushed here, it is not flushed again by super().finish().
        events = self._flush_pending()
        return events + (self._stop_events() if self.cut is not None else super().finish())

    def _emit_text(self, text: str) -> List[Event]:
        return [] if self.cut is not None else super()._emit_text(text)

    def _at_stop(self, text: str, hit: Tuple[int, str]) -> List[Event]:
        start, self.cut = hit
        self.held_text = ""
        return self._text_delta(text[:start], count=False)

    def _emit_reasoning(self, text: str) -> List[Event]:
        return [] if self.cut is not None else super()._emit_reasoning(text)

    def _tool_fragment(self, call: ToolCallDelta) -> List[Event]:
        return [] if self.cut is not None else super()._tool_fragment(call)

    def _ended(self, events: List[Event]) -> List[Event]:
        return events + self._stop_events() if self.cut is not None and not self.done else events

    def _stop_events(self) -> List[Event]:
        """Close the open block and end the message at the matched stop string."""
        self.deferred = []
        self.tools = [t for t in self.tools if t.live]  # calls not shown yet came after the stop
        self.finish_reason, self.matched_stop, self.stop_match = "stop", None, self.cut
        self._update_state_from_tools()
        # message_start first if nothing went out yet (the stop string was all the text there was).
        events = self.start() + self._close_open() + self._carrier_block()
        self.done = True
        return events + [self._message_delta(), {"type": "message_stop"}]


def _with_details_whole(state: Dict[str, Any]) -> Dict[str, Any]:
    """The state to carry, OpenRouter's streamed reasoning_details made whole again (a copy)."""
    pieces = state.get("reasoning_details")
    return {**state, "reasoning_details": whole_details(pieces)} if pieces else dict(state)


def whole_details(pieces: List[Any]) -> List[Any]:
    """OpenRouter's reasoning_details as its JSON answer gives them, and as it wants them back.

    A stream sends a piece with each delta, numbered by ``index``: one detail's text comes in
    fragments and its signature in a piece after them (its clients, Roo Code among them, put them
    together by index the same way). Echoed as they came, the text and its signature were apart. Pieces
    of one index and type in a row are one detail: its text and summary joined, its other fields
    the last ones given. One pass, the fragments joined once (a long reasoning is 80,000 pieces).
    """
    whole: List[Any] = []
    fragments: List[Dict[str, List[str]]] = []  # per detail: its text pieces so far
    for piece in pieces:
        last = whole[-1] if whole else None
        if not (isinstance(piece, dict) and isinstance(last, dict) and type(piece.get("index")) is int
                and piece.get("index") == last.get("index") and piece.get("type") == last.get("type")):
            whole.append(dict(piece) if isinstance(piece, dict) else piece)
            fragments.append({k: [piece[k]] for k in _JOINED if isinstance(piece, dict) and isinstance(piece.get(k), str)})
            continue
        for key, value in piece.items():
            if key in _JOINED and isinstance(value, str):
                fragments[-1].setdefault(key, []).append(value)
            elif value is not None:
                last[key] = value
    for detail, parts in zip(whole, fragments):
        for key, texts in parts.items():
            detail[key] = "".join(texts)
    return whole


_JOINED = ("text", "summary")


def plain_text_delta(obj: Any) -> Optional[str]:
    """The text of a chunk that carries only text (no finish, tools, reasoning, usage, error), else None."""
    choices = obj.get("choices") if type(obj) is dict else None
    if type(choices) is not list or len(choices) != 1 or obj.get("usage") or obj.get("error") or obj.get("x_groq"):
        return None
    choice = choices[0]
    delta = choice.get("delta") if type(choice) is dict else None
    if type(delta) is not dict or choice.get("finish_reason") is not None or choice.get("usage") or choice.get("error"):
        return None  # the end, usage in the choice (Moonshot/Kimi), its error: the full path reads it
    if type(choice.get("stop_reason")) is str or type(choice.get("matched_stop")) is str:
        return None  # vLLM/SGLang naming the stop string: the full path reads it
    text = delta.get("content")
    if type(text) is not str or not text or len(delta) > 2 or (len(delta) == 2 and "role" not in delta):
        return None
    return text


def reported_cost(obj: Any, field: Optional[str]) -> Optional[float]:
    """What a ChatCompletion or chunk says the upstream billed (``cost.billed_cost`` of its usage,
    ``field`` being ``Dialect.billed_cost_field``); None where it says nothing believable."""
    return billed_cost(obj.get("usage"), field) if isinstance(obj, dict) else None


class ChatFold(SSEFold):
    """Upstream SSE body lines in, Anthropic events out: the Chat Completions ``StreamFold``.

    ``feed_line`` takes the whole lines of one read (``upstream.iter_lines``); ``complete`` turns true at
    ``[DONE]`` or once finish_reason and the final usage are both in (no need to wait for
    more). ``end`` is called when the body ends or breaks: a stream that saw a
    finish_reason is finished normally; so is one whose body ended the way HTTP
    says a body ends (``clean``: the chunked terminator or the full
    Content-Length) after at least one chunk, as servers that omit both
    ``[DONE]`` and finish_reason do (PROTOCOL.md 3.6, case 58) -- unless a tool
    call's arguments are not a whole JSON object then: that body was cut inside
    them. Anything else is an error: EOF is not success (RELIABILITY.md S12).
    Error objects raise ``ProxyError``.
    """

    def __init__(self, translator: StreamTranslator, cost_field: Optional[str] = None) -> None:
        self.translator = translator
        # The usage field where the upstream reports what it billed (``Dialect.billed_cost_field``),
        # and the amount its last usage gave: the call's cost for the record.
        self.cost_field = cost_field
        self.billed_cost = None
        self.decoder = SSEDecoder()
        self.complete = False
        self.chunks = 0  # upstream chunks with a choice so far
        self.warnings: List[str] = []  # from a JSON answer's translation, for the caller to log

    @property
    def finishing(self) -> bool:
        return self.translator.has_finish_reason

    @property
    def stop_reason(self) -> Optional[str]:
        return self.translator.stop_reason

    @property
    def usage(self) -> Dict[str, Any]:
        return self.translator.usage_so_far

    def start(self) -> List[Event]:
        return self.translator.start()

    def fail(self, exc: ProxyError) -> List[Event]:
        return self.translator.fail(exc)

    def end(self, clean: bool = False) -> Tuple[List[Event], Optional[ProxyError]]:
        """Events that end the stream, or the error it ended with."""
        if self.complete:
            return [], None
        events, error = self._last_event()
        if error is not None or self.complete:
            return events, error
        if self.translator.has_finish_reason:
            return events + self._finish(), None
        if clean and self.chunks:
            if not self.translator.cut_in_tool_arguments:
                return events + self._finish(), None
            # The body ended properly, but inside a tool call: its input would be cut or empty.
            return events, UpstreamUnavailable(
                "upstream stream ended early inside a tool call's arguments (no finish_reason and no [DONE])")
        return events, UpstreamUnavailable("upstream stream ended early (no finish_reason and no [DONE])")

    def from_json(self, obj: Any) -> List[Event]:
        """A ChatCompletion body given to a stream request (upstreams that ignore ``stream``)."""
        t = self.translator
        message, self.warnings = message_from_body(
            obj, model=t.model, new_id=t.new_id, tool_names=t.tool_names, stop_sequences=t.stop_sequences,
            dialect_name=t.dialect_name, think_tags=t.think is not None, secrets=t.secrets,
            local_stops=t.local_stops, thinking=t.thinking, history=t.history,
        )
        t.usage_in_json = reports_usage(obj)
        # As pipeline's _json; without usage in the answer the record's stays unknown (usage_so_far).
        message = as_answered(message, t.message_id, t.input_tokens, t.usage_in_json)
        t.stop_reason, t.final_usage = message["stop_reason"], message["usage"]
        self._take_cost(obj)
        events = events_for_message(message)
        if t.started:
            events = events[1:]  # the relay already sent message_start while the body was slow
        t.started = t.done = self.complete = True
        return events

    def _on_event(self, event: ServerSentEvent) -> List[Event]:
        if is_done(event.data):
            return self._finish()
        try:
            obj = loads_data(event.data)
        except (ValueError, RecursionError):
            if event.event == "error":  # "event: error" with a plain-text message is still an error (3.4 step 1)
                raise error_from_object({"message": event.data}, self.translator.secrets) from None
            return self._not_json()
        self.bad_events = 0
        text = plain_text_delta(obj) if event.event != "error" else None
        if text is not None and self.translator.takes_plain_text:
            # Most chunks of an answer carry nothing but a little text: skip building a ChatResponse.
            self.chunks += 1
            return self.translator.plain_text(text)
        chunk = parse_chat_chunk(obj)
        self.chunks += chunk.choice is not None
        if chunk.usage is not None:
            self._take_cost(obj)
        if event.event == "error" and chunk.error is None:
            chunk = dataclasses.replace(chunk, error=obj if isinstance(obj, dict) else {"message": event.data})
        events = self.translator.feed(chunk)
        return events + self._finish() if self.translator.ready_to_finish else events

    @property
    def began(self) -> bool:  # ``StreamFold.began``: the role-only chunk is one (generation began)
        return self.chunks > 0

    def _finish(self) -> List[Event]:
        self.complete = True
        return self.translator.finish()

    def _take_cost(self, obj: Any) -> None:
        cost = reported_cost(obj, self.cost_field)
        if cost is not None:
            self.billed_cost = cost


class LocalStopFold(ChatFold):
    """The ``ChatFold`` of a ``LocalStopTranslator``: complete as soon as the translator ended
    the message at a stop string, so the relay stops reading and closes the upstream response."""

    def _on_event(self, event: ServerSentEvent) -> List[Event]:
        events = super()._on_event(event)
        self.complete = self.complete or self.translator.done
        return events

    @property
    def cut_short(self) -> bool:
        return self.translator.cut is not None
