"""The built-in model facts table: lookups, overrides from the config, and the table's own sanity."""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any, Dict

import pytest

from claudeproxy.model_facts import (
    BUILTIN_FACTS, PRICES_CHECKED, ModelFacts, builtin_facts, facts_from_dict,
)

# (name as a user writes it, the facts the proxy must use). Written from the vendor pages the
# module cites, not from the table.
# OpenAI's models before GPT-5.6 and DeepSeek's bill a cache write as input: their write price is it.
LOOKUP_CASES = [
    # exact names
    ("gpt-4o", {"context_window": 128_000, "max_output": 16_384, "input_price": 2.5, "cache_write_price": 2.5,
                "output_price": 10.0, "cache_read_price": 1.25}),
    ("o3", {"context_window": 200_000, "max_output": 100_000, "input_price": 2.0, "cache_write_price": 2.0,
            "output_price": 8.0, "cache_read_price": 0.5}),
    ("gpt-5", {"context_window": 272_000, "max_output": 128_000, "input_price": 1.25, "cache_write_price": 1.25,
               "output_price": 10.0, "cache_read_price": 0.125}),
    ("deepseek-reasoner", {"context_window": 1_000_000, "max_output": 384_000, "input_price": 0.14, "cache_write_price": 0.14,
                           "output_price": 0.28, "cache_read_price": 0.0028}),
    ("llama-3.3-70b-versatile", {"context_window": 131_072, "max_output": 32_768,
                                 "input_price": 0.59, "output_price": 0.79, "text_only": True}),
    ("minimax-m2", {"context_window": 204_800, "input_price": 0.3, "output_price": 1.2,
                    "cache_read_price": 0.03, "cache_write_price": 0.375, "text_only": True}),
    ("gpt-5.6-luna", {"context_window": 272_000, "max_output": 128_000, "input_price": 0.2,
                      "output_price": 1.2, "cache_read_price": 0.02, "cache_write_price": 0.25,
                      "responses_only": True}),
    # case does not matter
    ("GPT-4o", {"context_window": 128_000, "max_output": 16_384, "input_price": 2.5, "cache_write_price": 2.5,
                "output_price": 10.0, "cache_read_price": 1.25}),
    ("  O3  ", {"context_window": 200_000, "max_output": 100_000, "input_price": 2.0, "cache_write_price": 2.0,
                "output_price": 8.0, "cache_read_price": 0.5}),
    # dated, -latest and -preview forms resolve to the family
    ("gpt-4o-2024-08-06", {"context_window": 128_000, "max_output": 16_384, "input_price": 2.5, "cache_write_price": 2.5,
                           "output_price": 10.0, "cache_read_price": 1.25}),
    ("o3-2025-04-16", {"context_window": 200_000, "max_output": 100_000, "input_price": 2.0, "cache_write_price": 2.0,
                       "output_price": 8.0, "cache_read_price": 0.5}),
    ("gemini-2.5-flash-preview-05-20", {"context_window": 1_048_576, "max_output": 65_536,
                                        "input_price": 0.3, "output_price": 2.5, "cache_read_price": 0.03}),
    ("gemini-2.0-flash-001", {"context_window": 1_048_576, "max_output": 8_192, "input_price": 0.1,
                              "output_price": 0.4, "cache_read_price": 0.025}),
    ("gemini-3-pro-preview", {"context_window": 1_048_576, "max_output": 65_536, "input_price": 2.0,
                              "output_price": 12.0, "cache_read_price": 0.2}),
    ("gpt-5-chat-latest", {"context_window": 128_000, "max_output": 16_384, "input_price": 1.25, "cache_write_price": 1.25,
                           "output_price": 10.0, "cache_read_price": 0.125}),
    ("gpt-5.4-2026-03-05", {"context_window": 922_000, "max_output": 128_000, "input_price": 2.5, "cache_write_price": 2.5,
                            "output_price": 15.0, "cache_read_price": 0.25, "responses_only": True}),
    ("gpt-5-pro-2025-10-06", {"context_window": 272_000, "max_output": 128_000, "input_price": 15.0, "cache_write_price": 15.0,
                              "output_price": 120.0, "responses_only": True}),
    ("codex-mini-latest", {"context_window": 200_000, "max_output": 100_000, "input_price": 1.5, "cache_write_price": 1.5,
                           "output_price": 6.0, "cache_read_price": 0.375, "responses_only": True}),
    # Gemini's own models/ prefix keeps the vendor's prices
    ("models/gemini-2.5-pro", {"context_window": 1_048_576, "max_output": 65_536, "input_price": 1.25,
                               "output_price": 10.0, "cache_read_price": 0.125}),
    # host prefixes: limits stay, prices and responses_only go (another host's bill)
    ("openai/gpt-4o", {"context_window": 128_000, "max_output": 16_384}),
    ("openai/gpt-5-codex", {"context_window": 272_000, "max_output": 128_000}),
    ("google/gemini-2.5-pro", {"context_window": 1_048_576, "max_output": 65_536}),
    ("openrouter/openai/o3-pro", {"context_window": 200_000, "max_output": 100_000}),
    ("meta-llama/Llama-3.3-70B-Instruct", {"context_window": 131_072}),
    ("Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8", {"context_window": 262_144}),
    ("deepseek-ai/DeepSeek-V3.1", {"context_window": 131_072}),
    # Groq's hosted names carry Groq's caps; none of them takes images
    ("openai/gpt-oss-120b", {"context_window": 131_072, "max_output": 65_536, "text_only": True}),
    ("moonshotai/kimi-k2-instruct", {"context_window": 131_072, "max_output": 16_384, "text_only": True}),
    ("moonshotai/kimi-k2-instruct-0905", {"context_window": 262_144, "max_output": 16_384, "text_only": True}),
    ("qwen/qwen3-32b", {"context_window": 131_072, "max_output": 40_960, "text_only": True}),
    ("llama-3.1-8b-instant", {"context_window": 131_072, "max_output": 8_192, "input_price": 0.05,
                              "output_price": 0.08, "text_only": True}),
    # Kimi K2.5 and later take images, and Moonshot counts max_tokens into the window
    ("kimi-k2.5", {"context_window": 262_144, "max_output": 32_768}),
    ("moonshotai/kimi-k2-thinking", {"context_window": 262_144, "max_output": 32_768, "text_only": True}),
    # Ollama tags resolve to the family, never priced
    ("qwen3:8b", {"context_window": 40_960}),
    ("qwen3:latest", {"context_window": 40_960}),
    ("llama3.1:70b", {"context_window": 131_072}),
    ("llama3.1:8b-instruct-q4_K_M", {"context_window": 131_072}),
    ("gpt-oss:20b", {"context_window": 131_072, "max_output": 131_072, "text_only": True}),
    ("qwen3-coder:30b", {"context_window": 262_144}),
    ("qwen2.5-coder:7b", {"context_window": 32_768}),
    ("gemma3:27b", {"context_window": 131_072}),
    ("gemma3:1b", {"context_window": 32_768}),
    ("deepseek-r1:32b", {"context_window": 131_072}),
    ("devstral:24b", {"context_window": 131_072}),
    ("phi4:14b", {"context_window": 16_384}),
    ("mistral-nemo:12b", {"context_window": 128_000}),
    ("qwen3:30b-a3b-instruct-2507-q4_K_M", {"context_window": 262_144}),
    ("glm-4.6:cloud", {"context_window": 200_000, "max_output": 128_000, "text_only": True}),
    ("deepseek-v3.1:671b-cloud", {"context_window": 131_072}),
    # LM Studio keys
    ("qwen/qwen3-coder-30b", {"context_window": 262_144}),
    ("google/gemma-3-12b", {"context_window": 131_072}),
]


@pytest.mark.parametrize("name,expected", LOOKUP_CASES)
def test_lookup(name: str, expected: Dict[str, Any]) -> None:
    assert builtin_facts(name).to_dict() == expected


# Each trap: a name that starts like a more general row but is a different model.
SPECIFICITY_TRAPS = [
    ("gpt-4o-mini", "gpt-4o"),
    ("o3-mini", "o3"),
    ("o3-pro", "o3"),
    ("o1-pro", "o1"),
    ("gpt-5-codex", "gpt-5"),
    ("gpt-5-mini", "gpt-5"),
    ("gpt-5-pro", "gpt-5"),
    ("gpt-5.1-codex", "gpt-5.1"),
    ("gpt-5.1-codex-mini", "gpt-5.1-codex"),
    ("gpt-4.1-nano", "gpt-4.1"),
    ("gpt-4.1-mini", "gpt-4.1"),
    ("gpt-4o-2024-05-13", "gpt-4o"),
    ("gemini-2.5-flash-lite", "gemini-2.5-flash"),
    ("gemini-2.0-flash-lite-preview-02-05", "gemini-2.0-flash"),
    ("kimi-k2-0905", "kimi-k2"),
    ("qwen3-coder", "qwen3"),
    ("qwen3-235b-a22b-instruct-2507", "qwen3"),
    ("gemma3:1b", "gemma3"),
    ("phi4-mini", "phi4"),
]


@pytest.mark.parametrize("specific,general", SPECIFICITY_TRAPS)
def test_the_more_specific_name_wins(specific: str, general: str) -> None:
    assert builtin_facts(specific) != builtin_facts(general)
    assert builtin_facts(specific) != ModelFacts()


def test_specificity_traps_carry_the_right_facts() -> None:
    assert builtin_facts("gpt-4o-mini").input_price == 0.15
    assert builtin_facts("o3-mini").cache_read_price == 0.55
    assert builtin_facts("o3-pro").responses_only and not builtin_facts("o3").responses_only
    assert builtin_facts("gpt-5-codex").responses_only and not builtin_facts("gpt-5").responses_only
    assert builtin_facts("gpt-4.1-nano").output_price == 0.4
    assert builtin_facts("gpt-4o-2024-05-13").max_output == 4_096


@pytest.mark.parametrize("name", [
    "",
    "   ",
    ":",
    "/",
    "models/",
    "my-azure-deployment",
    "claude-opus-4-9",                     # no bare claude-opus-4 row for it to shorten to
    "claude-sonnet-4-7",
    "claude-opus-5-5",                     # Opus 5.5 is not Opus 5 (neither is in the table)
    "claude-fable-5-1",
    "gpt-4o-audio-preview",                # a different model, not gpt-4o with a suffix
    "gpt-4o-mini-search-preview",
    "gemini-2.0-flash-exp",                # free experimental: must not get the release's price
    "gemini-2.5-pro-preview-tts",
    "gemini-flash-latest",                 # a moving alias
    "mistral-large",                       # which release? unknown rather than wrong
    "codestral:22b",                       # the 2024 Codestral, not codestral-latest
    "deepseek/deepseek-chat",              # OpenRouter's older V3, not DeepSeek's alias
    "deepseek/deepseek-chat-v3-0324",
    "ft:gpt-4o-2024-08-06:my-org::abc123",  # a fine-tune bills its own rates
    "gpt-6.2-astra",
    "o1-preview",                          # retired; must not take o1's 100000 cap
])
def test_unknown_names_give_empty_facts(name: str) -> None:
    assert builtin_facts(name) == ModelFacts()
    assert builtin_facts(name).to_dict() == {}


def test_non_string_model_is_unknown() -> None:
    assert builtin_facts(None) == ModelFacts()  # type: ignore[arg-type]


def test_responses_only_models() -> None:
    # /work/shared/RESPONSES.md section 5, plus the later codex and pro ids.
    for name in ("o1-pro", "o3-pro", "o3-deep-research", "o4-mini-deep-research", "computer-use-preview",
                 "codex-mini-latest", "gpt-5-codex", "gpt-5-pro", "gpt-5.1-codex", "gpt-5.1-codex-mini",
                 "gpt-5.1-codex-max", "gpt-5.2-codex", "gpt-5.2-pro", "gpt-5.3-codex", "gpt-5.4-pro",
                 "gpt-5.5-pro",
                 # From gpt-5.4 on, tools with reasoning only on Responses (RESPONSES.md 5; probe AN 6).
                 "gpt-5.4", "gpt-5.4-mini", "gpt-5.4-nano", "gpt-5.5", "gpt-5.6-sol", "gpt-5.6-luna", "gpt-6-astra"):
        assert builtin_facts(name).responses_only, name
    for name in ("gpt-5", "gpt-5.1", "gpt-5.2", "gpt-5.3-chat", "o3", "o4-mini", "gpt-4.1", "gpt-5-chat-latest"):
        assert not builtin_facts(name).responses_only, name


def test_clamping_claude_codes_request_to_the_cap() -> None:
    # Claude Code asks for up to 128000; o3 takes 100000 on the first try.
    assert min(128_000, builtin_facts("o3").max_output or 128_000) == 100_000
    assert min(128_000, builtin_facts("gpt-4o").max_output or 128_000) == 16_384
    # No cap known (a local model): nothing is clamped.
    assert builtin_facts("qwen3:8b").max_output is None


# --- merged / to_dict ---------------------------------------------------------------------------

def test_merged_override_wins_where_set() -> None:
    base = builtin_facts("gpt-4o")
    merged = base.merged(ModelFacts(input_price=3.0, max_output=8_000))
    assert merged.input_price == 3.0
    assert merged.max_output == 8_000
    assert merged.context_window == 128_000 and merged.output_price == 10.0 and merged.cache_read_price == 1.25


def test_merged_unset_fields_do_not_clear() -> None:
    base = builtin_facts("gpt-5-codex")
    assert base.merged(ModelFacts()) == base
    # False is the default, so it cannot switch off a built-in True.
    assert base.merged(ModelFacts(responses_only=False)).responses_only


def test_merged_into_unknown_model() -> None:
    override = ModelFacts(context_window=32_768, responses_only=True, cache_write_price=0.0)
    assert ModelFacts().merged(override) == override
    assert ModelFacts().merged(override).to_dict() == {
        "context_window": 32_768, "cache_write_price": 0.0, "responses_only": True}


def test_to_dict_has_only_set_fields() -> None:
    assert ModelFacts().to_dict() == {}
    assert ModelFacts(max_output=10).to_dict() == {"max_output": 10}
    assert ModelFacts(input_price=0.0).to_dict() == {"input_price": 0.0}   # free is a price


def test_facts_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        builtin_facts("gpt-4o").input_price = 0.0  # type: ignore[misc]


# --- facts_from_dict ----------------------------------------------------------------------------

def test_facts_from_dict_reads_every_key() -> None:
    facts = facts_from_dict({
        "context_window": 200_000, "max_output_tokens": 100_000, "input_price": 2,
        "output_price": 8.0, "cache_read_price": 0.5, "cache_write_price": 0, "responses_only": True,
        "text_only": True,
    }, "providers.openai.models.o3")
    assert facts == ModelFacts(200_000, 100_000, 2.0, 8.0, 0.5, 0.0, True, True)
    assert isinstance(facts.input_price, float)


def test_facts_from_dict_reads_whether_a_deployment_reasons() -> None:
    """An Azure deployment's name does not say which model it runs: the table may (probe Y, D6)."""
    assert facts_from_dict({"reasoning": True}, "p") == ModelFacts(reasoning=True)
    assert facts_from_dict({"reasoning": False}, "p").to_dict() == {"reasoning": False}  # said, as text_only's false
    assert ModelFacts(reasoning=True).merged(ModelFacts(reasoning=False)).reasoning is False


def test_facts_from_dict_alias_and_empty() -> None:
    assert facts_from_dict({"max_output": 4_096}, "p") == ModelFacts(max_output=4_096)
    assert facts_from_dict({}, "p") == ModelFacts()


@pytest.mark.parametrize("name", [name for name, _ in BUILTIN_FACTS])
def test_every_row_round_trips_through_the_config_form(name: str) -> None:
    facts = dict(BUILTIN_FACTS)[name]
    assert facts_from_dict(facts.to_dict(), "p") == facts


PATH = "providers.groq.models.llama"
BAD_OVERRIDES = [
    ({"context_windw": 1}, "context_windw", "unknown key"),
    ({"max_tokens": 1}, "max_tokens", "unknown key"),
    ({"context_window": "128000"}, "context_window", "whole number"),
    ({"context_window": 128000.0}, "context_window", "whole number"),
    ({"context_window": True}, "context_window", "boolean"),
    ({"context_window": None}, "context_window", "null"),
    ({"context_window": 0}, "context_window", "positive"),
    ({"max_output_tokens": -1}, "max_output_tokens", "positive"),
    ({"max_output": False}, "max_output", "boolean"),
    ({"max_output_tokens": 1, "max_output": 2}, "max_output", "not both"),
    ({"input_price": "2.5"}, "input_price", "number"),
    ({"input_price": True}, "input_price", "boolean"),
    ({"output_price": -0.01}, "output_price", "negative"),
    ({"cache_read_price": float("nan")}, "cache_read_price", "finite"),
    ({"cache_write_price": float("inf")}, "cache_write_price", "finite"),
    ({"cache_write_price": float("-inf")}, "cache_write_price", "finite"),
    ({"input_price": None}, "input_price", "null"),
    ({"responses_only": "yes"}, "responses_only", "true or false"),
    ({"responses_only": 1}, "responses_only", "true or false"),
    ({"text_only": "no"}, "text_only", "true or false"),
    ({"reasoning": "high"}, "reasoning", "true or false"),
]


@pytest.mark.parametrize("obj,key,what", BAD_OVERRIDES)
def test_facts_from_dict_errors_name_the_path_and_key(obj: Dict[str, Any], key: str, what: str) -> None:
    with pytest.raises(ValueError) as info:
        facts_from_dict(obj, PATH)
    message = str(info.value)
    assert message.startswith(f"{PATH}.{key}: "), message
    assert what in message


@pytest.mark.parametrize("obj", [[], "o3", 3, None])
def test_facts_from_dict_needs_an_object(obj: Any) -> None:
    with pytest.raises(ValueError) as info:
        facts_from_dict(obj, PATH)
    assert str(info.value).startswith(f"{PATH}: ")


# --- the table itself ---------------------------------------------------------------------------

def test_patterns_are_unique() -> None:
    names = [name for name, _ in BUILTIN_FACTS]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("name,facts", BUILTIN_FACTS)
def test_row_is_sane_and_reachable(name: str, facts: ModelFacts) -> None:
    # Written the way the lookup normalises names, or no name could ever reach it.
    assert name == name.strip().lower() and ":" not in name and not name.startswith("models/")
    assert name.count("/") <= 1
    assert builtin_facts(name) == facts, "an earlier or more general row takes this one's names"
    if facts.context_window is not None and facts.max_output is not None:
        assert facts.max_output <= facts.context_window
    for size in (facts.context_window, facts.max_output):
        assert size is None or (isinstance(size, int) and not isinstance(size, bool) and size > 0)
    for price in (facts.input_price, facts.output_price, facts.cache_read_price, facts.cache_write_price):
        assert price is None or (isinstance(price, (int, float)) and math.isfinite(price) and price >= 0)
    if facts.cache_read_price is not None and facts.input_price is not None:
        assert facts.cache_read_price <= facts.input_price   # a cache hit never costs more


def test_only_openai_models_are_responses_only() -> None:
    for name, facts in BUILTIN_FACTS:
        if facts.responses_only:
            assert name.startswith(("o1", "o3", "o4", "gpt-", "codex-", "computer-use")), name


def test_prices_checked_is_an_iso_date() -> None:
    assert datetime.date.fromisoformat(PRICES_CHECKED) <= datetime.date(2030, 1, 1)


def test_facts_from_dict_reads_the_one_hour_cache_write_price() -> None:
    facts = facts_from_dict({"input_price": 3, "cache_write_price": 3.75, "cache_write_1h_price": 6}, "p.models.m")
    assert facts.cache_write_1h_price == 6.0 and isinstance(facts.cache_write_1h_price, float)
    with pytest.raises(ValueError, match="p.models.m.cache_write_1h_price: must not be negative"):
        facts_from_dict({"cache_write_1h_price": -1}, "p.models.m")


@pytest.mark.parametrize("name, prices", [
    # (input, output, cache read, 5-minute write, 1-hour write): platform.claude.com pricing table
    ("claude-opus-4-8", (5.0, 25.0, 0.5, 6.25, 10.0)),
    ("claude-opus-4-6", (5.0, 25.0, 0.5, 6.25, 10.0)),
    ("claude-opus-4-5-20251101", (5.0, 25.0, 0.5, 6.25, 10.0)),
    ("claude-opus-4-1-20250805", (15.0, 75.0, 1.5, 18.75, 30.0)),
    ("claude-opus-4-20250514", (15.0, 75.0, 1.5, 18.75, 30.0)),
    ("claude-opus-4-0", (15.0, 75.0, 1.5, 18.75, 30.0)),
    ("claude-sonnet-4-6", (3.0, 15.0, 0.3, 3.75, 6.0)),
    ("claude-sonnet-4-5-20250929", (3.0, 15.0, 0.3, 3.75, 6.0)),
    ("claude-sonnet-4-20250514", (3.0, 15.0, 0.3, 3.75, 6.0)),
    ("claude-3-7-sonnet-latest", (3.0, 15.0, 0.3, 3.75, 6.0)),
    ("claude-haiku-4-5-20251001", (1.0, 5.0, 0.1, 1.25, 2.0)),
    ("claude-3-5-haiku-20241022", (0.8, 4.0, 0.08, 1.0, 1.6)),
    ("claude-3-haiku-20240307", (0.25, 1.25, 0.03, 0.30, 0.50)),
])
def test_claude_list_prices(name: str, prices: Any) -> None:
    facts = builtin_facts(name)
    assert (facts.input_price, facts.output_price, facts.cache_read_price, facts.cache_write_price,
            facts.cache_write_1h_price) == prices
    # Prices only: nothing a passthrough client asks for is clamped.
    assert facts.max_output is None and facts.context_window is None


def test_claude_names_of_other_hosts_get_no_price() -> None:
    """Matching rule 6: OpenRouter's anthropic/... and an Ollama-style tag bill their own rates."""
    assert builtin_facts("anthropic/claude-sonnet-4-5").input_price is None
    assert builtin_facts("claude-sonnet-4-5:latest").input_price is None
