"""Built-in facts about upstream models: context window, output cap, prices, Responses-only.

Pure: no I/O, no clock, no environment. ``builtin_facts(model)`` answers from the
declarative ``BUILTIN_FACTS`` table below; ``facts_from_dict`` validates the
per-provider override a config file gives; ``ModelFacts.merged`` lays such an
override over the built-in row.

What the fields mean
--------------------
``context_window`` is the most input tokens the model accepts. Where a vendor
documents a total window shared with the output and a separate input cap, this is
the input cap: OpenAI's GPT-5 family has a 400,000-token window of which at most
272,000 are input (the API answers "Input tokens exceed the configured limit of
272,000 tokens"), and the 1,050,000-token models take 922,000 input.
``max_output`` is the largest max_tokens / max_completion_tokens /
max_output_tokens the vendor accepts; the proxy clamps Claude Code's request (up
to 128000) to it. None means unknown or no fixed cap (open-weight models served
locally generate until the context is full), and then nothing is clamped.
Prices are USD per million tokens for the vendor's own API at the standard tier.
Where a vendor charges more above a prompt size (Gemini Pro above 200K input,
OpenAI's 1M-window models above 272K: 2x input, 1.5x output) the table holds the
base tier, so a longer request costs more than these prices say. ``None`` means
no price is known, and then the caller shows tokens and no cost.

Matching rules
--------------
1. Case-insensitive; surrounding blanks ignored.
2. ``models/`` (Gemini's own resource names) is dropped and the name stays the
   vendor's. Any other prefix (``openai/gpt-4o``, ``deepseek/deepseek-chat``,
   ``meta-llama/...``, ``qwen/...``, ``moonshotai/...``, ``google/...``) marks a
   name served by a host or an aggregator (OpenRouter, Groq, Together, LM Studio).
   Rows whose pattern has the prefix (``openai/gpt-oss-120b``: Groq's caps) are
   tried first, then the name without its prefixes.
3. An Ollama tag (``qwen3:8b``, ``llama3.1:70b-instruct-q4_K_M``, ``gpt-oss:20b``)
   is dropped piece by piece like a version suffix, whatever it says.
4. The name resolves to the longest pattern it equals once trailing version
   pieces are removed: date stamps and snapshot numbers (``-2024-08-06``,
   ``-0528``, ``-2507``, ``-001``), ``-latest``, ``-preview``, ``-instruct``,
   ``-it``, ``-cloud``, parameter counts (``-70b``, ``-a35b``) and quantizations
   (``-q4_k_m``, ``-fp8``). Any other piece stops the search, so ``gpt-4o-mini``
   is never ``gpt-4o``, ``o3-pro`` never ``o3``, ``gpt-5-codex`` never ``gpt-5``,
   ``gpt-4o-audio-preview`` is unknown, and ``-exp`` (free experimental) models are
   not priced as the release. A pattern may itself end in such a piece to pin an
   exact name that differs from its family (``gpt-4o-2024-05-13``, Mistral's
   dated releases).
5. Unknown names give ``ModelFacts()``.
6. A name that came with a host prefix or an Ollama tag and matched a row
   without one keeps the limits and ``text_only`` but loses the prices and ``responses_only``:
   hosts bill their own rates, and only OpenAI's own API is Responses-only. Set
   such prices per provider in the config.

The lookup is one dict probe per name piece: no regex per row, no cache.

Local servers
-------------
Windows for open-weight models are the native context length per the model card
(as ``ollama show`` reports it). Ollama does not serve that window unless told
to: its docs (docs/context-length.mdx, ollama commit 948f693) give a default ``num_ctx`` of
4k below 24 GiB of VRAM, 32k for 24-48 GiB and 256k from 48 GiB (older releases: 4096,
before that 2048); ``OLLAMA_CONTEXT_LENGTH`` or a Modelfile ``num_ctx`` raises it.
LM Studio and vLLM likewise serve the length they were loaded with.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    context_window: Optional[int] = None      # tokens of input the model accepts (its context length)
    max_output: Optional[int] = None          # largest max_tokens / max_completion_tokens / max_output_tokens
    input_price: Optional[float] = None       # USD per 1M uncached input tokens
    output_price: Optional[float] = None      # USD per 1M output tokens
    cache_read_price: Optional[float] = None  # USD per 1M cached input tokens read
    cache_write_price: Optional[float] = None  # USD per 1M tokens written to the cache (None: no charge/unknown)
    responses_only: bool = False              # OpenAI serves it only on /v1/responses
    # Takes no images: each goes as a text placeholder. None: not said (a provider's table may say
    # false of a model the built-in rows call text-only: a host serving a vision build of it).
    text_only: Optional[bool] = None
    # USD per 1M tokens written to Anthropic's 1-hour cache; None: twice input_price where the model
    # has a cache_write_price (cost.cache_write_1h_price), as Anthropic bills them. Last, so the rows
    # and tests that give the fields above by position keep their meaning.
    cache_write_1h_price: Optional[float] = None
    # USD per 1,000 web searches the upstream runs itself (Anthropic's web search tool, a Responses
    # model's hosted web_search); None: not known, and a call that searched has no cost.
    web_search_price: Optional[float] = None
    # A reasoning model (OpenAI's o-series and gpt-5 on the Responses API: its effort, its reasoning
    # summaries and their encrypted replay). None: told by the name, which an Azure deployment's
    # (``prod-coder``) does not say; only a config file's table sets it.
    reasoning: Optional[bool] = None

    def merged(self, override: "ModelFacts") -> "ModelFacts":
        """These facts with every field ``override`` sets (not None, or True) taking its place."""
        changes = {f.name: getattr(override, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if _is_said(k, v)})

    def to_dict(self) -> Dict[str, Any]:
        """Only the fields that are set, under their field names (``facts_from_dict`` reads them back)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v for k, v in values.items() if _is_said(k, v)}


def _is_set(value: Any) -> bool:
    # responses_only is "set" only when True: False is its default and cannot override a True.
    # text_only's default is None, so a provider's false overrides a built-in true.
    return value is not None and value is not False


def _is_said(name: str, value: Any) -> bool:
    return value is not None if name in ("text_only", "reasoning") else _is_set(value)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

# The date the prices below were checked, against stored copies of the sources each group
# names (not live pages). The newest of those copies: OpenAI pricing and model pages as
# quoted up to September 2026 (GPT-6 Astra, the 2026-07-30 GPT-5.6 cuts), BerriAI LiteLLM's
# model_prices_and_context_window.json as synced 2026-07-24, DeepSeek's pricing page of
# May 2026, Mistral's of June 2026, Anthropic's pricing page as stored on 2026-12-04 (its newest
# copy lists Claude Fable 5.1). A price changed after those is not reflected.
PRICES_CHECKED = "2026-12-04"

_F = ModelFacts

# --- OpenAI. Sources: developers.openai.com/api/docs/models/<id> and /pricing (windows, caps,
# prices, "available in the Responses API only"); the 272,000 input cap of the 400K models from
# OpenAI's GPT-5 launch post and the API error quoted on community.openai.com; Responses-only per
# the openai-python ResponsesModel list and RESPONSES.md section 5; cross-checked
# against LiteLLM's table (mode "responses", supported_endpoints). GPT-5.6 Luna/Terra carry the
# 2026-07-30 cuts; GPT-5.6 and GPT-6 bill cache writes at 1.25x input (OpenAI, via Simon
# Willison and the LiteLLM GPT-6 Astra notes); the models before them bill cache writes as input.
_GPT5_400K = _F(272_000, 128_000)
_GPT5_1M = _F(922_000, 128_000)
_GPT5_CHAT = _F(128_000, 16_384)
_OPENAI: Tuple[Tuple[str, ModelFacts], ...] = (
    ("gpt-4o", _F(128_000, 16_384, 2.50, 10.00, 1.25)),
    ("gpt-4o-2024-05-13", _F(128_000, 4_096, 5.00, 15.00)),
    ("gpt-4o-mini", _F(128_000, 16_384, 0.15, 0.60, 0.075)),
    ("gpt-4.1", _F(1_047_576, 32_768, 2.00, 8.00, 0.50)),
    ("gpt-4.1-mini", _F(1_047_576, 32_768, 0.40, 1.60, 0.10)),
    ("gpt-4.1-nano", _F(1_047_576, 32_768, 0.10, 0.40, 0.025)),
    ("o1", _F(200_000, 100_000, 15.00, 60.00, 7.50)),
    # Retired, and not o1: an empty row keeps o1-preview from taking o1's larger cap.
    ("o1-preview", _F()),
    ("o1-mini", _F(None, None, 1.10, 4.40)),
    ("o1-pro", _F(200_000, 100_000, 150.00, 600.00, responses_only=True)),
    ("o3", _F(200_000, 100_000, 2.00, 8.00, 0.50)),
    ("o3-mini", _F(200_000, 100_000, 1.10, 4.40, 0.55)),
    ("o3-pro", _F(200_000, 100_000, 20.00, 80.00, responses_only=True)),
    ("o3-deep-research", _F(200_000, 100_000, 10.00, 40.00, 2.50, responses_only=True)),
    ("o4-mini", _F(200_000, 100_000, 1.10, 4.40, 0.275)),
    ("o4-mini-deep-research", _F(200_000, 100_000, 2.00, 8.00, 0.50, responses_only=True)),
    ("codex-mini-latest", _F(200_000, 100_000, 1.50, 6.00, 0.375, responses_only=True)),
    ("computer-use-preview", _F(8_192, 1_024, 3.00, 12.00, responses_only=True)),
    ("gpt-5", dataclasses.replace(_GPT5_400K, input_price=1.25, output_price=10.00, cache_read_price=0.125)),
    ("gpt-5-mini", dataclasses.replace(_GPT5_400K, input_price=0.25, output_price=2.00, cache_read_price=0.025)),
    ("gpt-5-nano", dataclasses.replace(_GPT5_400K, input_price=0.05, output_price=0.40, cache_read_price=0.005)),
    ("gpt-5-chat", dataclasses.replace(_GPT5_CHAT, input_price=1.25, output_price=10.00, cache_read_price=0.125)),
    ("gpt-5-codex", _F(272_000, 128_000, 1.25, 10.00, 0.125, responses_only=True)),
    ("gpt-5-pro", _F(272_000, 128_000, 15.00, 120.00, responses_only=True)),
    ("gpt-5.1", _F(272_000, 128_000, 1.25, 10.00, 0.125)),
    ("gpt-5.1-chat", dataclasses.replace(_GPT5_CHAT, input_price=1.25, output_price=10.00, cache_read_price=0.125)),
    ("gpt-5.1-codex", _F(272_000, 128_000, 1.25, 10.00, 0.125, responses_only=True)),
    ("gpt-5.1-codex-mini", _F(272_000, 128_000, 0.25, 2.00, 0.025, responses_only=True)),
    ("gpt-5.1-codex-max", _F(272_000, 128_000, 1.25, 10.00, 0.125, responses_only=True)),
    ("gpt-5.2", _F(272_000, 128_000, 1.75, 14.00, 0.175)),
    ("gpt-5.2-chat", dataclasses.replace(_GPT5_CHAT, input_price=1.75, output_price=14.00, cache_read_price=0.175)),
    ("gpt-5.2-codex", _F(272_000, 128_000, 1.75, 14.00, 0.175, responses_only=True)),
    ("gpt-5.2-pro", _F(272_000, 128_000, 21.00, 168.00, responses_only=True)),
    ("gpt-5.3-chat", dataclasses.replace(_GPT5_CHAT, input_price=1.75, output_price=14.00, cache_read_price=0.175)),
    ("gpt-5.3-codex", _F(272_000, 128_000, 1.75, 14.00, 0.175, responses_only=True)),
    # From gpt-5.4 on, function tools with reasoning work only on the Responses API (RESPONSES.md 5:
    # "Function tools with reasoning_effort are not supported for gpt-5.4 in /v1/chat/completions.
    # Please use /v1/responses instead."): Claude Code sends both every turn, and each was refused.
    ("gpt-5.4", dataclasses.replace(_GPT5_1M, input_price=2.50, output_price=15.00, cache_read_price=0.25,
                                    responses_only=True)),
    ("gpt-5.4-mini", dataclasses.replace(_GPT5_400K, input_price=0.75, output_price=4.50, cache_read_price=0.075,
                                         responses_only=True)),
    ("gpt-5.4-nano", dataclasses.replace(_GPT5_400K, input_price=0.20, output_price=1.25, cache_read_price=0.02,
                                         responses_only=True)),
    ("gpt-5.4-pro", _F(922_000, 128_000, 30.00, 180.00, responses_only=True)),
    ("gpt-5.5", dataclasses.replace(_GPT5_1M, input_price=5.00, output_price=30.00, cache_read_price=0.50,
                                    responses_only=True)),
    ("gpt-5.5-pro", _F(922_000, 128_000, 30.00, 180.00, responses_only=True)),
    ("gpt-5.6-sol", _F(922_000, 128_000, 5.00, 30.00, 0.50, 6.25, responses_only=True)),
    ("gpt-5.6-terra", _F(922_000, 128_000, 2.00, 12.00, 0.20, 2.50, responses_only=True)),
    ("gpt-5.6-luna", _F(272_000, 128_000, 0.20, 1.20, 0.02, 0.25, responses_only=True)),
    ("gpt-6-astra", _F(922_000, 128_000, 10.00, 50.00, 1.00, 12.50, responses_only=True)),
    # Open weights: OpenAI's model page gives 131,072 / 131,072; hosts bill their own rates.
    ("gpt-oss", _F(131_072, 131_072, text_only=True)),  # text in, text out
)

# --- DeepSeek. Source: api-docs.deepseek.com/quick_start/pricing (stored copies of April-May
# 2026): deepseek-v4-flash and deepseek-v4-pro, 1M context, output up to 384K; deepseek-chat and
# deepseek-reasoner are the compatibility names of v4-flash's non-thinking and thinking modes
# (announced to be withdrawn after 2026-07-24). Cache-hit price cut to 1/10 on 2026-04-26; the
# v4-pro 75% discount made permanent. No cache-write charge. Open-weight V3.x/R1 windows are the
# 128K DeepSeek documented for them; their prices depend on the host.
_V4_FLASH = _F(1_000_000, 384_000, 0.14, 0.28, 0.0028)
_DEEPSEEK: Tuple[Tuple[str, ModelFacts], ...] = (
    ("deepseek-chat", _V4_FLASH),
    ("deepseek-reasoner", _V4_FLASH),
    ("deepseek-v4-flash", _V4_FLASH),
    ("deepseek-v4-pro", _F(1_000_000, 384_000, 0.435, 0.87, 0.003625)),
    ("deepseek-v3", _F(131_072)),
    ("deepseek-v3.1", _F(131_072)),
    ("deepseek-v3.2", _F(131_072)),
    ("deepseek-r1", _F(131_072)),
    # OpenRouter's deepseek/deepseek-chat is an older V3 snapshot, not DeepSeek's alias: unknown.
    ("deepseek/deepseek-chat", _F()),
)

# --- Google Gemini. Source: ai.google.dev/gemini-api/docs/models/<id> (input / output token
# limits) and /pricing (prompts up to 200K; Pro costs more above), cross-checked with LiteLLM's
# gemini/* rows. Caching is billed per hour of storage, not per token written: no write price.
_GEMINI_1M = 1_048_576
_GEMINI: Tuple[Tuple[str, ModelFacts], ...] = (
    ("gemini-2.0-flash", _F(_GEMINI_1M, 8_192, 0.10, 0.40, 0.025)),
    ("gemini-2.0-flash-lite", _F(_GEMINI_1M, 8_192, 0.075, 0.30)),
    ("gemini-2.5-pro", _F(_GEMINI_1M, 65_536, 1.25, 10.00, 0.125)),
    ("gemini-2.5-flash", _F(_GEMINI_1M, 65_536, 0.30, 2.50, 0.03)),
    ("gemini-2.5-flash-lite", _F(_GEMINI_1M, 65_536, 0.10, 0.40, 0.01)),
    ("gemini-3-pro", _F(_GEMINI_1M, 65_536, 2.00, 12.00, 0.20)),
    ("gemini-3-flash", _F(_GEMINI_1M, 65_536, 0.50, 3.00, 0.05)),
    ("gemini-3.1-pro", _F(_GEMINI_1M, 65_536, 2.00, 12.00, 0.20)),
)

# --- Mistral. Sources: docs.mistral.ai model cards (context), mistral.ai/pricing as quoted by
# developer.puter.com (June 2026) and margindash.com, cross-checked with LiteLLM's mistral/* rows.
# The -latest names move to new releases, so dated names get their own rows. Mistral documents
# no output cap apart from the context. Prices only where the sources agree.
_MISTRAL: Tuple[Tuple[str, ModelFacts], ...] = (
    ("mistral-large-latest", _F(262_144, None, 0.50, 1.50)),
    ("mistral-large-2512", _F(262_144, None, 0.50, 1.50)),
    ("mistral-large-2411", _F(131_072, None, 2.00, 6.00)),
    ("mistral-medium-latest", _F(262_144, None, 1.50, 7.50)),
    ("mistral-medium-2604", _F(262_144, None, 1.50, 7.50)),
    ("mistral-medium-2508", _F(131_072, None, 0.40, 2.00)),
    ("mistral-medium-2505", _F(131_072, None, 0.40, 2.00)),
    ("mistral-small-2506", _F(131_072)),
    ("codestral-latest", _F(256_000, None, 0.30, 0.90)),
    ("codestral-2508", _F(256_000, None, 0.30, 0.90)),
    ("devstral-latest", _F(262_144, None, 0.40, 2.00)),
    ("devstral-2512", _F(262_144, None, 0.40, 2.00)),
    ("devstral-medium-latest", _F(262_144, None, 0.40, 2.00)),
    ("devstral-medium-2507", _F(131_072, None, 0.40, 2.00)),
    ("devstral-small-latest", _F(262_144, None, 0.10, 0.30)),
    ("devstral-small-2512", _F(262_144, None, 0.10, 0.30)),
    ("labs-devstral-small-2512", _F(262_144, None, 0.10, 0.30)),
    ("devstral-small-2507", _F(131_072, None, 0.10, 0.30)),
    ("devstral-small-2505", _F(131_072, None, 0.10, 0.30)),
    ("magistral-medium-latest", _F(131_072, None, 2.00, 5.00)),
    ("magistral-medium-2509", _F(131_072, None, 2.00, 5.00)),
    ("magistral-small-latest", _F(131_072, None, 0.50, 1.50)),
    ("magistral-small-2509", _F(131_072, None, 0.50, 1.50)),
    ("open-mistral-nemo", _F(128_000)),
)

# --- Groq's hosted names. Source: console.groq.com/docs/models (context window, max completion
# tokens; copies in phsang198/LLM_API_Using and braintrustdata/braintrust-proxy#925) and
# groq.com/pricing as quoted by LiteLLM's groq/* rows and the aicost crate. Prices only on the
# names no other host uses. Together serves moonshotai/Kimi-K2-Instruct under the same name and
# so gets Groq's 16,384 cap: lower than it may allow, never higher. None of these takes images (Groq
# refuses a content list on them: "messages[1].content must be a string").
_GROQ: Tuple[Tuple[str, ModelFacts], ...] = (
    ("llama-3.3-70b-versatile", _F(131_072, 32_768, 0.59, 0.79, text_only=True)),
    ("llama-3.1-8b-instant", _F(131_072, 8_192, 0.05, 0.08, text_only=True)),
    ("openai/gpt-oss-120b", _F(131_072, 65_536, text_only=True)),
    ("openai/gpt-oss-20b", _F(131_072, 32_768, text_only=True)),
    ("qwen/qwen3-32b", _F(131_072, 40_960, text_only=True)),
    ("kimi-k2-instruct", _F(131_072, 16_384, text_only=True)),
    ("kimi-k2-instruct-0905", _F(262_144, 16_384, text_only=True)),
)

# --- Anthropic Claude (passthrough to Anthropic's own API: routing drops these prices for any other
# host, which serves models of its own under these names). Source:
# platform.claude.com/docs/en/about-claude/pricing, "Model pricing" (stored copies of the table from
# Opus 5 down to Opus 4.1, and of the one from Opus 4.6 down to Haiku 3), and its docs.anthropic.com
# copy for Sonnet 3.5. Per model: base input, output, cache hits (0.1x input), 5-minute cache writes
# (1.25x; Haiku 3 $0.30) and 1-hour writes (2x). Sonnet 4 and 4.5 cost more above 200K input
# ($6 / $22.50): the base tier here. Prices only: windows and output caps stay unknown, so nothing a
# client asks for is clamped. There is no bare claude-opus-4 / claude-sonnet-4 row: "claude-opus-4-9"
# would shorten to it (matching rule 4) and take another model's price; the 4.0 releases match by
# their dated ids and -0 aliases. Opus 5 is left out for the same reason ("claude-opus-5-5" would
# take its price), and later models (Opus 5.5, Sonnet and Haiku 5.5, Fable, Mythos) because their
# cache rates or price bands could not be checked from that table.
# Anthropic's web search tool: $10 per 1,000 searches, on top of the tokens (the same pricing page,
# "Web search tool"); Claude Code's WebSearch runs it when the upstream is Anthropic itself.
ANTHROPIC_WEB_SEARCH_PRICE = 10.0


def _claude(inp: float, out: float, read: float, write_5m: float, write_1h: float) -> ModelFacts:
    return _F(input_price=inp, output_price=out, cache_read_price=read, cache_write_price=write_5m,
              cache_write_1h_price=write_1h, web_search_price=ANTHROPIC_WEB_SEARCH_PRICE)


_OPUS_45 = _claude(5.00, 25.00, 0.50, 6.25, 10.00)
_OPUS_4 = _claude(15.00, 75.00, 1.50, 18.75, 30.00)
_SONNET = _claude(3.00, 15.00, 0.30, 3.75, 6.00)
_ANTHROPIC: Tuple[Tuple[str, ModelFacts], ...] = (
    ("claude-opus-4-8", _OPUS_45),
    ("claude-opus-4-7", _OPUS_45),
    ("claude-opus-4-6", _OPUS_45),
    ("claude-opus-4-5", _OPUS_45),
    ("claude-opus-4-1", _OPUS_4),
    ("claude-opus-4-0", _OPUS_4),
    ("claude-opus-4-20250514", _OPUS_4),
    ("claude-sonnet-4-6", _SONNET),
    ("claude-sonnet-4-5", _SONNET),
    ("claude-sonnet-4-0", _SONNET),
    ("claude-sonnet-4-20250514", _SONNET),
    ("claude-3-7-sonnet", _SONNET),
    ("claude-3-5-sonnet", _SONNET),
    ("claude-haiku-4-5", _claude(1.00, 5.00, 0.10, 1.25, 2.00)),
    ("claude-3-5-haiku", _claude(0.80, 4.00, 0.08, 1.00, 1.60)),
    ("claude-3-opus", _OPUS_4),
    ("claude-3-haiku", _claude(0.25, 1.25, 0.03, 0.30, 0.50)),
)

# --- Moonshot Kimi K2 (open weights; Moonshot retired its kimi-k2-*-preview ids on 2026-05-25).
# Source: Moonshot model cards and platform.kimi.ai/docs/models as quoted by promptfoo and
# openclaw: K2-0711 128K, K2-0905 / K2-Thinking / K2.5 / K2.6 256K. K2 takes text only, K2.5 and
# later images too. Moonshot counts max_tokens into the window (the prompt and Claude Code's 128000
# would leave a 262K window 134K of prompt): every Kimi is capped at 32,768, the default of
# platform.kimi.ai's K2.6 quickstart and the limit Gitlawb/openclaude#1796 checked against the API. GLM-4.5 and 4.6 and MiniMax-M2 take text only (their vision models are others:
# GLM-4.5V).
# --- Zhipu GLM. Source: docs.z.ai (GLM-4.5 128K; GLM-4.6 200K context, 128K output), cross-checked
# with LiteLLM's zai/* rows and Vercel's model page.
# --- MiniMax. Source: MiniMax platform docs via Vercel's AI Gateway provider table and LiteLLM's
# minimax/MiniMax-M2 row: 204,800 context; $0.30 / $1.20, cache read $0.03, cache write $0.375.
_OTHER_VENDORS: Tuple[Tuple[str, ModelFacts], ...] = (
    ("kimi-k2", _F(131_072, 32_768, text_only=True)),
    ("kimi-k2-0905", _F(262_144, 32_768, text_only=True)),
    ("kimi-k2-thinking", _F(262_144, 32_768, text_only=True)),
    ("kimi-k2.5", _F(262_144, 32_768)),
    ("kimi-k2.6", _F(262_144, 32_768)),
    ("glm-4.5", _F(128_000, text_only=True)),
    ("glm-4.6", _F(200_000, 128_000, text_only=True)),
    ("minimax-m2", _F(204_800, None, 0.30, 1.20, 0.03, 0.375, text_only=True)),
)

# --- Open-weight models as Ollama, LM Studio and Hugging Face name them. Source: each model card
# and `ollama show` (context length): Qwen3 40,960 (the 2507 refresh 262,144), Qwen3-Coder
# 262,144, Qwen2.5-Coder 32,768, Llama 3.1-3.3 131,072, Gemma 3 131,072 (1B and 270M: 32,768),
# Mistral NeMo 128K, Devstral Small 1.x 128K, Phi-4 16,384 (Phi-4-mini 131,072). No prices.
_LOCAL: Tuple[Tuple[str, ModelFacts], ...] = (
    ("qwen3", _F(40_960)),
    ("qwen3-30b-a3b-instruct-2507", _F(262_144)),
    ("qwen3-30b-a3b-thinking-2507", _F(262_144)),
    ("qwen3-235b-a22b-instruct-2507", _F(262_144)),
    ("qwen3-235b-a22b-thinking-2507", _F(262_144)),
    ("qwen3-4b-instruct-2507", _F(262_144)),
    ("qwen3-4b-thinking-2507", _F(262_144)),
    ("qwen3-coder", _F(262_144)),
    ("qwen2.5-coder", _F(32_768)),
    ("llama3.1", _F(131_072)),
    ("llama-3.1", _F(131_072)),
    ("llama3.2", _F(131_072)),
    ("llama-3.2", _F(131_072)),
    ("llama3.3", _F(131_072)),
    ("llama-3.3", _F(131_072)),
    ("gemma3", _F(131_072)),
    ("gemma-3", _F(131_072)),
    ("gemma3-1b", _F(32_768)),
    ("gemma-3-1b", _F(32_768)),
    ("gemma3-270m", _F(32_768)),
    ("gemma-3-270m", _F(32_768)),
    ("mistral-nemo", _F(128_000)),
    ("devstral", _F(131_072)),
    ("phi4", _F(16_384)),
    ("phi-4", _F(16_384)),
    ("phi4-mini", _F(131_072)),
    ("phi-4-mini", _F(131_072)),
)

def _writes_at_input_price(rows: Tuple[Tuple[str, ModelFacts], ...]) -> Tuple[Tuple[str, ModelFacts], ...]:
    """The rows with a cache-write price equal to their input price where they have none: vendors
    that charge nothing more for the tokens a call writes to the cache bill them as input. Without
    it a call that reported any (OpenAI's newer ``cache_write_tokens``, DeepSeek's Anthropic
    endpoint's ``cache_creation_input_tokens``) had no cost at all."""
    return tuple((name, dataclasses.replace(facts, cache_write_price=facts.input_price)
                  if facts.cache_write_price is None and facts.input_price is not None else facts)
                 for name, facts in rows)


BUILTIN_FACTS: Tuple[Tuple[str, ModelFacts], ...] = (
    _writes_at_input_price(_OPENAI) + _ANTHROPIC + _writes_at_input_price(_DEEPSEEK) + _GEMINI + _MISTRAL + _GROQ
    + _OTHER_VENDORS + _LOCAL
)

# Read-only index over the table (a MappingProxyType cannot be changed through it).
_INDEX: Mapping[str, ModelFacts] = types.MappingProxyType(dict(BUILTIN_FACTS))

# Trailing name pieces that do not change the model (matching rule 4).
_VERSION_PIECE = re.compile(
    r"\d+|latest|preview|instruct|it|cloud"
    r"|\d+(?:\.\d+)?[bm]|a\d+(?:\.\d+)?b"
    r"|q\d\w*|fp\d+|bf16|int\d+|awq|gptq|gguf|mlx|\d+bit"
)


# ---------------------------------------------------------------------------------------------
# Lookup
# ---------------------------------------------------------------------------------------------

def builtin_facts(model: str) -> ModelFacts:
    """The built-in facts for an upstream model name; ``ModelFacts()`` when it is unknown."""
    name = model.strip().lower() if isinstance(model, str) else ""
    if name.startswith("models/"):      # Gemini's own resource name: still the vendor's
        name = name[len("models/"):]
    base, _, tag = name.partition(":")
    path = base.split("/")
    tag_pieces = tag.split("-") if tag else []
    if not path[-1]:
        return ModelFacts()
    if len(path) > 1:
        hosted = _probe(path[-2] + "/" + path[-1], tag_pieces)
        if hosted is not None:
            return hosted
    facts = _probe(path[-1], tag_pieces)
    if facts is None:
        return ModelFacts()
    if len(path) > 1 or tag:
        # Matching rule 6: another host's name keeps the limits (and that the model takes text only),
        # not the vendor's prices.
        return ModelFacts(facts.context_window, facts.max_output, text_only=facts.text_only)
    return facts


def is_claude_name(model: str) -> bool:
    """Is this one of Anthropic's model names (Claude Code's ``claude-sonnet-4-5``...)?"""
    return isinstance(model, str) and model.strip().lower().startswith("claude")


def without_prices(facts: ModelFacts) -> ModelFacts:
    """``facts`` with its limits and no price: a host that bills its own rates."""
    return dataclasses.replace(facts, **dict.fromkeys(_PRICE_KEYS))


def _probe(base: str, tag_pieces: Sequence[str]) -> Optional[ModelFacts]:
    """The row for the longest form of ``base`` + tag left after dropping trailing version pieces."""
    for key in _shortenings(base, tag_pieces):
        facts = _INDEX.get(key)
        if facts is not None:
            return facts
    return None


def _shortenings(base: str, tag_pieces: Sequence[str]) -> Iterator[str]:
    """``base-tag`` and then shorter forms, one trailing piece less each, while pieces may go."""
    pieces = base.split("-") + list(tag_pieces)
    droppable_tag = len(tag_pieces)
    while pieces:
        yield "-".join(pieces)
        last = pieces.pop()
        if droppable_tag:
            droppable_tag -= 1      # an Ollama tag piece always goes, whatever it says
        elif not _VERSION_PIECE.fullmatch(last):
            return


# ---------------------------------------------------------------------------------------------
# Config overrides
# ---------------------------------------------------------------------------------------------

# Config key -> field; max_output_tokens is the name the rest of the config uses.
_INT_KEYS: Mapping[str, str] = types.MappingProxyType(
    {"context_window": "context_window", "max_output_tokens": "max_output", "max_output": "max_output"}
)
_PRICE_KEYS = ("input_price", "output_price", "cache_read_price", "cache_write_price", "cache_write_1h_price",
               "web_search_price")
_BOOL_KEYS = ("responses_only", "text_only", "reasoning")
_ALL_KEYS = tuple(_INT_KEYS) + _PRICE_KEYS + _BOOL_KEYS
# Bounds far above any real model (the dearest list price is a few hundred USD per million tokens, the
# largest window a few million tokens) and far below what breaks arithmetic: a price of 1e308 made
# one call's cost infinite, the usage page a 500 and /v1/usage a bare Infinity, which is not JSON.
MAX_PRICE = 1_000_000.0  # USD per million tokens
MAX_TOKENS = 1_000_000_000  # a context window, an output cap


def facts_as_config(facts: ModelFacts) -> Dict[str, Any]:
    """The facts that are set, under the keys a config file's ``models`` table takes (--print-config):
    ``max_output_tokens``, the name the rest of the config uses, rather than the field's ``max_output``."""
    return {("max_output_tokens" if k == "max_output" else k): v for k, v in facts.to_dict().items()}


def facts_from_dict(obj: Mapping[str, Any], path: str) -> ModelFacts:
    """Validate a config object of model facts; errors read ``ValueError("<path>.<key>: ...")``."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: must be an object with keys {', '.join(_ALL_KEYS)}")
    if "max_output_tokens" in obj and "max_output" in obj:
        raise ValueError(f"{path}.max_output: give max_output_tokens or its alias max_output, not both")
    fields: Dict[str, Any] = {}
    for key, value in obj.items():
        if key in _INT_KEYS:
            fields[_INT_KEYS[key]] = _token_count(value, f"{path}.{key}")
        elif key in _PRICE_KEYS:
            fields[key] = _price(value, f"{path}.{key}")
        elif key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise ValueError(f"{path}.{key}: must be true or false, not {_kind(value)}")
            fields[key] = value
        else:
            raise ValueError(f"{path}.{key}: unknown key (expected one of {', '.join(_ALL_KEYS)})")
    return ModelFacts(**fields)


def _token_count(value: Any, where: str) -> int:
    # bool is an int subclass: `true` must not become a window of 1 token.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: must be a whole number of tokens, not {_kind(value)}")
    if value <= 0:
        raise ValueError(f"{where}: must be a positive number of tokens, not {value}")
    if value > MAX_TOKENS:
        raise ValueError(f"{where}: must be at most {MAX_TOKENS} tokens, not {value}")
    return value


def _price(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: must be a number of USD per million tokens, not {_kind(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{where}: must be a finite number, not {value}")
    if value < 0:
        raise ValueError(f"{where}: must not be negative, not {value}")
    if value > MAX_PRICE:
        raise ValueError(f"{where}: must be at most {MAX_PRICE:.0f} USD per million tokens, not {value}")
    return float(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return repr(value)
    return f"a {type(value).__name__}"
