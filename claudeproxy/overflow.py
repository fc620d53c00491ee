"""Whether an upstream error means "the prompt does not fit", and the sizes it names.

No I/O. Claude Code compacts the conversation only when a 400
``invalid_request_error`` begins ``prompt is too long``; it reads the sizes
with ``/prompt is too long[^0-9]*(\\d+)\\s*tokens?\\s*>\\s*(\\d+)/i``
(``parsePromptTooLongTokenCounts`` in its ``services/api/errors.ts``), the
form the Anthropic API itself uses: ``prompt is too long: 208310 tokens >
200000 maximum``. Every other upstream says it in its own words; this module
knows those words and says it Anthropic's way. A real body for each wording,
with its source, is in ``tests/fixtures/errors/context_overflow/``.

A refusal whose prompt fits and whose *output* budget overflows the window is
not this: retrying with a smaller ``max_tokens`` helps there, compacting does
not (OpenHands#9937 compacted in a loop on exactly that), so ``headroom``
feeds the ``max_tokens`` retry instead.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping, NamedTuple, Optional, Pattern, Tuple

PHRASE = "prompt is too long"
_MAX_MESSAGE = 1000  # the whole client message
_MAX_UPSTREAM = 800  # the upstream's own words inside it
_NUM = r"\d{1,3}(?:,\d{3})+|\d+"  # DS4 writes "300,000 tokens"
_LEAST_ROOM = 1024  # of output worth a retry with a smaller max_tokens, where the prompt's size is a sum's part
_GUESS_MARGIN = 256  # tokens left between a prompt's estimate and the window (``room_beside``)
_SURELY_OVER = 1.25  # an estimate this far over the window is over it (the raw one leans high by less)


class Sizes(NamedTuple):
    """Token counts an error names; ``prompt`` only when the upstream counted it exactly."""

    prompt: Optional[int] = None
    limit: Optional[int] = None  # the context window (or input cap)
    output: Optional[int] = None  # the output budget the request asked for, when named
    # The prompt and the output budget together, where only their sum is named (Moonshot's
    # "requested"): the prompt is that less the max_tokens sent.
    together: Optional[int] = None


def _rx(pattern: str) -> Pattern[str]:
    """``<P>``, ``<L>``, ``<O>`` name the prompt, limit and output counts; ``<N>`` is any count."""
    for mark, name in (("<P>", "p"), ("<L>", "l"), ("<O>", "o")):
        pattern = pattern.replace(mark, f"(?P<{name}>{_NUM})")
    return re.compile(pattern.replace("<N>", f"(?:{_NUM})"), re.IGNORECASE | re.DOTALL)


# Wordings that name the prompt size exactly.
_EXACT = (
    r"prompt is too long:?\s*<P>\s*tokens?\s*>\s*<L>",  # Anthropic
    r"maximum context length is <L> tokens\. However, your messages resulted in <P> tokens",  # OpenAI, Azure
    r"configured limit of <L> tokens\. Your messages resulted in <P> tokens",  # Azure, gpt-5 family
    r"maximum context length is <L> tokens\. However, your request has <P> input tokens",  # vLLM 0.10-0.17
    # vLLM's renderer where it counted the whole prompt (no "at least"): the exact form of _LOOSE's first.
    r"maximum context length is <L> tokens\. However, you requested <O> output tokens and your prompt "
    r"contains <P> input tokens",
    r"\(\s*<O>\s*>\s*<L>\s*-\s*<P>\s*\)",  # vLLM 0.10-0.17 max_tokens refusal: "(1000 > 32768 - 32000)"
    r"prompt (?:\(length |length of )<P>\)? is longer than the maximum model length of <L>",  # vLLM engine
    r"prompt \(total length <P>\) is too long to fit into the model \(context length <L>\)",  # vLLM engine
    r"input token count \(<P>\) exceeds the maximum number of tokens allowed \(<L>\)",  # Gemini
    r"prompt contains <P> tokens.*?too large for model with <L> maximum context length",  # Mistral
    r"prompt token count of <P> exceeds the limit of <L>",  # GitHub Copilot
    r"request \(<P> tokens\) exceeds (?:the available )?context size \(<L> tokens\)",  # llama.cpp
    r"prompt tokens \(<P>\) exceeds context size \(<L>\)",  # ds4
    r"prompt has <P> tokens, but the configured context size is <L> tokens",  # ds4
    r"maximum prompt length is <L> but the request contains <P> tokens",  # xAI
    r"input \(<P> tokens\) is longer than the model'?s context length \(<L> tokens\)",  # Together
    r"input length \(?<P>\)? exceeds (?:the )?(?:model'?s )?maximum "
    r"(?:context length|allowed input length of) \(?<L>",  # LiteLLM, OpenRouter (Poolside)
    r"exceed context limit: <P> \+ <O> > <L>",  # Anthropic: input length and `max_tokens` ...
)
# vLLM >= 0.18 counts the prompt only up to the window and says "at least": no exact prompt size.
_LOOSE = (
    r"maximum context length is <L> tokens\. However, you requested <O> output tokens",
    # vLLM's check of max_tokens alone: the window is named, the prompt not counted at all.
    r"max_tokens=<O>\s*cannot be greater than max_model_len=(?:max_total_tokens=)?<L>",
    r"you passed <N> input (?:tokens|characters) and requested <O> output tokens\. "
    r"However, the model'?s context length is only <L> tokens",
)
# Moonshot counts max_tokens into its window: "Your request exceeded model token limit: 262144
# (requested: 269030)", the prompt and max_tokens together (MoonshotAI/kimi-cli#2011).
_SUM = r"model token limit:?\s*<L>\s*\(\s*requested:?\s*(?P<t>\d+)\s*\)"
# OpenAI, DeepSeek, vLLM <= 0.9, OpenRouter: "... you requested [about] T tokens (<parts>)".
_TOTAL = (r"maximum context length is <L> tokens[.,]? however,? you requested (?:about )?<N> tokens "
          r"\((?P<parts>[^)]*)\)")
_PART = (r"(<N>) (in the messages|in the functions|in your prompt|of [a-z ]*input|"
         r"in the completion|for the completion|in the output)")

# A structured code or type that says it outright (OpenAI/Azure/Groq/Responses, llama.cpp, Copilot, ds4).
_CODE = (
    r"context_length_exceeded|exceed_context_size|context_window_exceeded|"
    r"model_max_prompt_tokens_exceeded|\bcontext_exceeded\b"
)
# The words, for bodies whose code says nothing (DeepSeek answers code "invalid_request_error").
_CONTEXT = (
    r"prompt is too long|prompt too long|context[_ ]length|context window|context size|maximum context|"
    r"maximum prompt length|maximum model length|input is too long|too many tokens|reduce the length|"
    r"exceeds the (?:model's )?(?:context|maximum)|prompt token count of \d+ exceeds|max_prompt_tokens|"
    r"model token limit|range of input length|too large for model with|exceed_context_size"
)
# A reverse proxy's HTML error page (nginx's 413) says it in its title.
_TITLE = r"<title>\s*([^<]{1,200}?)\s*</title>"
# Rate limits that talk about tokens ("Too many tokens, please wait", "tokens per min (TPM)").
_NOT_OVERFLOW = r"rate.?limit|throttl|too many requests|per min(?:ute)?\b|\(TPM\)|please wait"


class _Compiled(NamedTuple):
    exact: Tuple[Pattern[str], ...]
    loose: Tuple[Pattern[str], ...]
    sum: Pattern[str]
    total: Pattern[str]
    part: Pattern[str]
    code: Pattern[str]
    context: Pattern[str]
    title: Pattern[str]
    not_overflow: Pattern[str]


@functools.lru_cache(maxsize=1)
def _rx_all() -> _Compiled:
    """The patterns above, compiled on the first upstream error: compiling them
    takes about 10 ms, which every start would otherwise pay."""
    flat = functools.partial(re.compile, flags=re.IGNORECASE)
    return _Compiled(tuple(map(_rx, _EXACT)), tuple(map(_rx, _LOOSE)), _rx(_SUM), _rx(_TOTAL), _rx(_PART),
                     flat(_CODE), flat(_CONTEXT), flat(_TITLE), flat(_NOT_OVERFLOW))


def _num(text: str) -> int:
    return int(text.replace(",", ""))


def _group(match: Any, name: str) -> Optional[int]:
    value = match.groupdict().get(name)
    return _num(value) if value is not None else None


def _field(err: Mapping[str, Any], name: str) -> Optional[int]:
    value = err.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _from_total(message: str) -> Optional[Sizes]:
    """The parenthesised breakdown: messages + functions (+ text input) are the prompt."""
    match = _rx_all().total.search(message)
    if match is None:
        return None
    prompt = output = 0
    for part in _rx_all().part.finditer(match.group("parts")):
        count, where = _num(part.group(1)), part.group(2).lower()
        if "completion" in where or "output" in where:
            output += count
        else:
            prompt += count
    return Sizes(prompt or None, _group(match, "l"), output)


def read_sizes(message: str, err: Optional[Mapping[str, Any]] = None) -> Sizes:
    """The sizes an upstream error names; fields left None that it does not name."""
    err = err or {}
    # llama.cpp and ds4 put both numbers in fields next to the message.
    prompt, limit = _field(err, "n_prompt_tokens"), _field(err, "n_ctx")
    if prompt is not None and limit is not None:
        return Sizes(prompt, limit)
    total = _from_total(message)
    if total is not None:
        return total
    for pattern in _rx_all().exact:
        match = pattern.search(message)
        if match:
            return Sizes(_group(match, "p"), _group(match, "l"), _group(match, "o"))
    for pattern in _rx_all().loose:
        match = pattern.search(message)
        if match:
            return Sizes(None, _group(match, "l"), _group(match, "o"))
    match = _rx_all().sum.search(message)
    if match:
        return Sizes(None, _group(match, "l"), together=_group(match, "t"))
    return Sizes()


def headroom(message: str, asked: Optional[int] = None, prompt_guess: Optional[int] = None) -> Optional[int]:
    """The output budget that fits, when the message tells: window minus an exactly
    counted prompt (or the prompt a sum names, less ``asked``: the max_tokens sent); where the
    upstream stopped counting the prompt (vLLM), what fits beside ``prompt_guess``, the proxy's own
    estimate of it (``_beside_a_guess``)."""
    sizes = read_sizes(message)
    if sizes.limit is None:
        return None
    if sizes.prompt is not None:
        return sizes.limit - sizes.prompt
    if sizes.together is not None and asked:
        room = sizes.limit - (sizes.together - asked)
        # A few tokens of answer is no answer: under a quarter of what was asked and under 1,024,
        # the prompt is what does not fit (Moonshot's refusal then reads "prompt is too long").
        return room if room >= min(_LEAST_ROOM, asked // 4) else None
    if sizes.output is not None:
        return _beside_a_guess(sizes.limit, sizes.output, prompt_guess)
    return None


def _beside_a_guess(limit: int, output: int, prompt_guess: Optional[int]) -> Optional[int]:
    """vLLM counts a prompt only until it knows the request cannot fit ("your prompt contains at least
    W - O + 1 input tokens"): the refusal says the prompt is over the window less the output asked,
    not by how much. The room beside the proxy's estimate of the prompt, less a margin, where that is
    less than was asked and still an answer; else half what was asked (half the window where the asked
    output alone filled it: no prompt had room), while that is 1,024 tokens or more. Each refusal
    after narrows it again (the caller's retries are bounded); None: the prompt is what does not fit
    (``requested 0 output tokens``: the prompt alone is over the window)."""
    asked = min(output, limit)
    if prompt_guess is not None and asked > 0:
        if prompt_guess > limit * _SURELY_OVER:
            return None  # over the window by more than the estimate may lean high: halving only wastes calls
        room = room_beside(limit, prompt_guess)
        if min(_LEAST_ROOM, asked // 4) <= room < asked:
            return room
    half = asked // 2
    return half if half >= _LEAST_ROOM or (output >= limit and half > 0) else None


def room_beside(window: int, prompt: int) -> int:
    """The output that fits in ``window`` beside a prompt estimated at ``prompt`` tokens, less a margin
    for the estimate (256 tokens, or a twentieth of the prompt)."""
    return window - prompt - max(_GUESS_MARGIN, prompt // 20)


def prompt_uncounted(message: str) -> bool:
    """Does the refusal name the window and the output asked, but not the prompt (vLLM's "at least")?"""
    sizes = read_sizes(message)
    return sizes.limit is not None and sizes.output is not None and sizes.prompt is None and sizes.together is None


def _fits(sizes: Sizes) -> bool:
    """The prompt is not what overflows: it fits, or the output budget alone fills the window."""
    if sizes.limit is None:
        return False
    if sizes.prompt is not None and sizes.prompt < sizes.limit:
        return True
    return sizes.output is not None and sizes.output >= sizes.limit


def _codes(err: Mapping[str, Any]) -> str:
    return " ".join(v for v in (err.get("code"), err.get("type")) if isinstance(v, str))


def says_prompt_too_long(status: Optional[int], message: str, err: Optional[Mapping[str, Any]] = None) -> bool:
    """Does this upstream error mean the prompt does not fit?

    ``status`` is the upstream's HTTP status, or None for an error object in a
    200 body or a stream that names none. A 413 always does: the request body
    is too big, and a shorter conversation is the way out.
    """
    err = err or {}
    if status == 413:
        return True
    if _fits(read_sizes(message, err)):
        return False  # a max_tokens problem: the caller retries with a smaller budget
    if _rx_all().code.search(_codes(err)):
        return status != 429
    if status not in (None, 400, 422) or _rx_all().not_overflow.search(message):
        return False
    return bool(_rx_all().context.search(message))


def prompt_too_long(status: Optional[int], message: str, err: Optional[Mapping[str, Any]] = None) -> str:
    """The client message: ``prompt is too long: N tokens > M maximum (upstream S: ...)``.

    Without both counts it is ``prompt is too long: <upstream message>``; an
    Anthropic-native message that already says it passes through unchanged.
    """
    title = _rx_all().title.search(message) if message.startswith("<") else None
    message = title.group(1) if title else message
    if message[: len(PHRASE)].lower() == PHRASE:
        return (PHRASE + message[len(PHRASE):])[:_MAX_MESSAGE]
    upstream = message if len(message) <= _MAX_UPSTREAM else message[: _MAX_UPSTREAM - 3] + "..."
    sizes = read_sizes(message, err)
    if sizes.prompt is None or sizes.limit is None or sizes.prompt < sizes.limit:
        return f"{PHRASE}: {upstream}"
    where = f"upstream {status}" if status else "upstream"
    return f"{PHRASE}: {sizes.prompt} tokens > {sizes.limit} maximum ({where}: {upstream})"

