"""Provider detection and per-model dialect rules (PROTOCOL.md section 5, FIELD-NOTES 6 and 13)."""

from __future__ import annotations

from typing import Any

import pytest

from claudeproxy.dialects import DIALECTS, Dialect, azure_api_version, detect_provider, dialect_for, effort_for_budget
from claudeproxy.apis.chat.request import REASONING_STYLES, to_chat_request
from claudeproxy.anthropic_types import Thinking, parse_messages_request

DETECT_CASES = [
    ("https://api.openai.com/v1", "openai"),
    ("https://API.OpenAI.com/v1/", "openai"),
    ("https://myres.openai.azure.com/openai/deployments/gpt4o", "azure"),
    ("https://myres.cognitiveservices.azure.com/openai/deployments/o3", "azure"),
    ("https://openrouter.ai/api/v1", "openrouter"),
    ("https://api.deepseek.com", "deepseek"),
    ("https://api.deepseek.com/v1", "deepseek"),
    ("https://api.groq.com/openai/v1", "groq"),
    ("https://api.mistral.ai/v1", "mistral"),
    ("https://api.moonshot.ai/v1", "moonshot"),
    ("https://api.moonshot.cn/v1", "moonshot"),
    ("https://generativelanguage.googleapis.com/v1beta/openai/", "gemini"),
    ("http://localhost:11434/v1", "ollama"),
    ("http://127.0.0.1:11434", "ollama"),
    ("http://localhost:1234/v1", "lmstudio"),
    ("https://api.x.ai/v1", "generic"),  # on purpose: its refusals are recognised (dialects.py)
    ("http://localhost:8000/v1", "vllm"),  # vLLM's default port, on a machine of one's own
    ("http://192.168.1.20:30000/v1", "vllm"),  # SGLang's, which takes vLLM's fields
    ("http://vllm:8000/v1", "vllm"),  # a compose service
    ("https://gw.example.com:8000/v1", "generic"),  # a team's gateway serves other models too
    ("http://localhost:8080", "generic"),  # llama.cpp's, and many other servers'
    ("http://localhost:8001/v1", "generic"),
    ("https://llm.internal.example/v1", "generic"),
    ("", "generic"),
    ("not a url", "generic"),
    ("http://localhost:notaport/v1", "generic"),
]


@pytest.mark.parametrize("url,provider", DETECT_CASES)
def test_detect_provider(url: str, provider: str) -> None:
    assert detect_provider(url) == provider


@pytest.mark.parametrize("url", [
    "https://api.openai.com.evil.example/v1",        # the host only starts like OpenAI's
    "https://api.openai.com@evil.example/v1",        # userinfo, the host is evil.example
    "https://notopenrouter.ai/api/v1",
    "https://openai.azure.com.attacker.net/openai",
    "https://evil.example/api.openai.com/v1",        # the name in the path, not the host
])
def test_lookalike_hosts_are_generic(url: str) -> None:
    assert detect_provider(url) == "generic"


def test_every_detected_provider_has_a_dialect() -> None:
    for _, provider in DETECT_CASES:
        assert provider in DIALECTS


def test_dialect_names_and_flags_are_consistent() -> None:
    for name, dialect in DIALECTS.items():
        assert dialect.name == name
        assert dialect.reasoning in REASONING_STYLES
        assert dialect.reasoning_history in ("drop", "reasoning_content", "reasoning_content_all", "reasoning", "both")
        assert dialect.system_role in ("system", "developer", "user")
        assert dialect.max_tokens_field in ("max_tokens", "max_completion_tokens")
        assert dialect.schema_sanitizer in ("none", "gemini")
        assert dialect.cache_key_field in (None, "prompt_cache_key", "session_id")


# --------------------------------------------------------------------------
# Model rules (OpenAI reasoning models: FIELD-NOTES 6).

REASONING_MODELS = ["o1", "o1-2024-12-17", "o3", "o3-mini", "o3-pro", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5.1", "gpt-5-codex"]
CHAT_MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-nano", "gpt-3.5-turbo", "chatgpt-4o-latest"]


@pytest.mark.parametrize("provider", ["openai", "azure"])
@pytest.mark.parametrize("model", REASONING_MODELS)
def test_openai_reasoning_models(provider: str, model: str) -> None:
    dialect = dialect_for(provider, model)
    assert dialect.max_tokens_field == "max_completion_tokens"
    assert dialect.drop_sampling is True
    assert dialect.reasoning == "effort"
    assert dialect.system_role == "developer"


@pytest.mark.parametrize("model", REASONING_MODELS + CHAT_MODELS + [
    "gpt-5-chat-latest", "gpt-5.1-chat", "GPT-5", "GPT-5-mini", "O3", "codex-mini-latest", "my-deployment"])
def test_both_openai_apis_agree_on_which_models_reason(model: str) -> None:
    # gpt-5-chat-latest reasons on neither (Chat sent it reasoning_effort and dropped its
    # temperature); an Azure deployment named GPT-5 reasons on both (Chat sent it max_tokens).
    from claudeproxy.apis.responses.request import is_reasoning_model

    for provider in ("openai", "azure"):
        assert (dialect_for(provider, model).reasoning == "effort") == is_reasoning_model(model), (provider, model)


@pytest.mark.parametrize("model", ["o1-mini", "o1-mini-2024-09-12", "o1-preview", "O1-mini"])  # any case: an Azure name
def test_o1_mini_and_preview_take_no_system_role(model: str) -> None:
    """They reject both system and developer (FIELD-NOTES 13): the system text goes as a user message."""
    dialect = dialect_for("openai", model)
    assert dialect.system_role == "user"
    assert dialect.max_tokens_field == "max_completion_tokens" and dialect.drop_sampling


@pytest.mark.parametrize("provider", ["openai", "azure"])
@pytest.mark.parametrize("model", CHAT_MODELS)
def test_openai_chat_models_keep_max_tokens_and_get_no_effort(provider: str, model: str) -> None:
    """Known decision: chat models reject reasoning_effort, so only reasoning models get it."""
    dialect = dialect_for(provider, model)
    assert dialect.max_tokens_field == "max_tokens"
    assert dialect.drop_sampling is False
    assert dialect.reasoning == "none"
    assert dialect.system_role == "system"


def test_openrouter_openai_reasoning_models_drop_sampling_only() -> None:
    dialect = dialect_for("openrouter", "openai/o3-mini")
    assert dialect.drop_sampling is True
    assert dialect.max_tokens_field == "max_tokens"  # OpenRouter normalises the field itself
    assert dialect_for("openrouter", "anthropic/claude-sonnet-4.5").drop_sampling is False


def test_model_rules_apply_only_to_their_providers() -> None:
    for provider in ("generic", "ollama", "vllm", "groq", "deepseek", "mistral", "gemini"):
        assert dialect_for(provider, "o3").max_tokens_field == "max_tokens", provider


def test_deepseek_thinking_mode_gets_its_reasoning_back() -> None:
    """deepseek-reasoner is V4-flash's thinking mode now (model_facts): a tool-call turn without its
    reasoning_content is a 400 there (PROTOCOL.md 5.4), as for every V3.2/V4 model."""
    for model in ("deepseek-reasoner", "deepseek-chat", "deepseek-v4-pro"):
        assert dialect_for("deepseek", model).reasoning_history == "reasoning_content_all", model


@pytest.mark.parametrize("model,setting,sent", [
    ("o3", "2024-10-21", "2025-04-01-preview"),      # the GA default cannot serve o-series
    ("gpt-5-mini", "2024-10-21", "2025-04-01-preview"),
    ("gpt-5-chat", "2024-10-21", "2025-04-01-preview"),  # of the GPT-5 series, though no reasoning model
    ("o3", "2025-03-01-preview", "2025-03-01-preview"),  # a version the user chose stays
    ("gpt-4.1", "2024-10-21", "2024-10-21"),
])
def test_azure_api_version_for_reasoning_deployments(model: str, setting: str, sent: str) -> None:
    assert azure_api_version(setting, dialect_for("azure", model)) == sent


def test_dialect_for_returns_fresh_values() -> None:
    """Model rules must not leak into the shared table."""
    dialect_for("openai", "o3")
    assert DIALECTS["openai"].max_tokens_field == "max_tokens"
    assert isinstance(dialect_for("openai", "gpt-4o"), Dialect)


# --------------------------------------------------------------------------
# Provider flags the translator relies on.


def test_stop_sequence_limits() -> None:
    """Known decision: unknown servers are held to OpenAI's schema (4); servers known to take more say so."""
    assert DIALECTS["generic"].max_stop == 4
    assert DIALECTS["openai"].max_stop == 4
    assert DIALECTS["azure"].max_stop == 4
    for name in ("openrouter", "ollama", "vllm", "lmstudio", "llamacpp"):
        assert DIALECTS[name].max_stop is None, name


def test_openai_reasoning_models_get_no_stop() -> None:
    """They answer 400 "Unsupported parameter: 'stop'"; the proxy matches the stop strings itself."""
    from claudeproxy.anthropic_types import parse_messages_request
    from claudeproxy.apis.chat.request import to_chat_request

    req = parse_messages_request({"model": "c", "max_tokens": 9, "stop_sequences": ["END"],
                                  "messages": [{"role": "user", "content": "hi"}]})
    for provider, model in (("openai", "o3"), ("openai", "o4-mini"), ("openai", "gpt-5"), ("azure", "o1-mini"),
                            ("azure", "gpt-5-mini")):
        dialect = dialect_for(provider, model)
        assert not dialect.sends_stop, (provider, model)
        assert "stop" not in to_chat_request(req, model=model, dialect=dialect).request.to_dict()
    for provider, model in (("openai", "gpt-4o"), ("azure", "gpt-4.1"), ("generic", "o3"), ("openrouter", "openai/o3")):
        assert dialect_for(provider, model).sends_stop, (provider, model)
        assert to_chat_request(req, model=model, dialect=dialect_for(provider, model)).request.to_dict()["stop"] == ["END"]


def test_user_turns_stay_apart_only_where_consecutive_user_messages_are_accepted() -> None:
    """DeepSeek reasoner, Gemini and Mistral-family templates want user and assistant to alternate
    (PROTOCOL.md 1.2 step 4); OpenAI's API takes consecutive user messages."""
    assert {n for n, d in DIALECTS.items() if not d.merge_user_turns} == {"openai"}
    assert not dialect_for("openai", "o1-mini").merge_user_turns
    for model in ("gpt-4o", "gpt-5", "o3", "o1-mini"):  # Azure OpenAI is OpenAI's API
        assert not dialect_for("azure", model).merge_user_turns, model
    assert dialect_for("azure", "DeepSeek-R1").merge_user_turns  # a Foundry model: unknown rules, so merged


def test_prompt_cache_key_only_where_documented() -> None:
    """OpenAI, Mistral: prompt_cache_key; OpenRouter: session_id; Azure only for OpenAI's models,
    because Azure Foundry's other models reject the field."""
    fields = {n: d.cache_key_field for n, d in DIALECTS.items() if d.cache_key_field}
    assert fields == {"openai": "prompt_cache_key", "mistral": "prompt_cache_key", "openrouter": "session_id"}
    for model in ("gpt-4o", "gpt-4.1-mini", "gpt-5", "o3", "o1-mini", "chatgpt-4o-latest"):
        assert dialect_for("azure", model).cache_key_field == "prompt_cache_key", model
    for model in ("DeepSeek-V3.1", "Kimi-K2.5", "Llama-3.3-70B-Instruct", "my-deployment"):
        assert dialect_for("azure", model).cache_key_field is None, model


def test_file_parts_only_where_documented() -> None:
    assert {n for n, d in DIALECTS.items() if d.supports_file_parts} == {"openai", "azure", "openrouter"}


def test_mistral_and_gemini_and_deepseek_flags() -> None:
    mistral = DIALECTS["mistral"]
    assert mistral.short_tool_ids and mistral.bridge_tool_to_user and mistral.prefill_prefix
    assert DIALECTS["gemini"].schema_sanitizer == "gemini"
    assert DIALECTS["deepseek"].assistant_empty_content == ""
    assert DIALECTS["ollama"].reasoning == "ollama"  # known decision: only explicit budgets, and "none" for off
    assert DIALECTS["ollama"].thinks_unless_told and DIALECTS["vllm"].thinks_unless_told
    assert DIALECTS["azure"].auth == "azure"


def test_thought_signatures_only_for_gemini() -> None:
    """Gemini-only fields (thought_signature on tool calls) stay on Gemini."""
    assert {n for n, d in DIALECTS.items() if d.thought_signatures} == {"gemini"}


@pytest.mark.parametrize("budget,effort", [
    (0, "low"), (1024, "low"), (2000, "low"), (4095, "low"),
    (4096, "medium"), (10000, "medium"), (16383, "medium"),
    (16384, "high"), (31999, "high"), (10 ** 6, "high"),
])
def test_effort_for_budget(budget: int, effort: str) -> None:
    assert effort_for_budget(budget) == effort


def test_only_kimi_models_get_reasoning_back_on_every_tool_turn() -> None:
    """Moonshot's thinking models refuse a tool-call turn without reasoning_content; its
    moonshot-v1 models never think, and get the field only if there is thinking to send."""
    assert dialect_for("moonshot", "kimi-k2.6").reasoning_history == "reasoning_content_all"
    assert dialect_for("moonshot", "kimi-k2-thinking").reasoning_history == "reasoning_content_all"
    assert dialect_for("moonshot", "moonshot-v1-8k").reasoning_history == "reasoning_content"
    assert dialect_for("generic", "kimi-k2.6").reasoning_history == "drop"


@pytest.mark.parametrize("model,reasoning", [("gpt-4.1", "none"), ("gpt-4o-mini", "none"), ("openai/gpt-4o", "none"),
                                             ("chatgpt-4o-latest", "none"), ("gpt-3.5-turbo", "none"),
                                             ("gpt-5", "effort"), ("o3", "effort"), ("qwen3-32b", "effort")])
def test_openai_chat_models_behind_an_unknown_url_are_not_asked_for_effort(model: str, reasoning: str) -> None:
    """They refuse reasoning_effort as on OpenAI; each session behind a gateway paid a refused round trip."""
    assert dialect_for("generic", model).reasoning == reasoning


@pytest.mark.parametrize("model,reasoning,think_tags", [
    ("llama-3.3-70b-versatile", "none", False),  # "reasoning_format is not supported with this model"
    ("llama-3.1-8b-instant", "none", False),
    ("openai/gpt-oss-120b", "explicit", False),  # reasoning_effort; reasoning_format is refused
    ("openai/gpt-oss-20b", "explicit", False),
    ("qwen/qwen3-32b", "groq", True),  # reasoning_format; "raw" (the default) puts <think> in the text
])
def test_groq_reasoning_fields_follow_the_model(model: str, reasoning: str, think_tags: bool) -> None:
    """A probe: every Groq model got reasoning_format and a low/medium/high effort for a thinking
    budget, and each refused one of them (console.groq.com/docs/reasoning)."""
    dialect = dialect_for("groq", model)
    assert (dialect.reasoning, dialect.think_tags) == (reasoning, think_tags)


@pytest.mark.parametrize("model,reasoning", [("gemini-2.5-flash", "gemini"), ("gemini-2.5-flash-lite", "gemini"),
                                             ("gemini-2.5-pro", "explicit"), ("models/gemini-2.5-pro", "explicit"),
                                             ("gemini-3-pro-preview", "explicit"), ("gemini-3-flash", "explicit"),
                                             ("gemini-pro-latest", "explicit"), ("gemini-flash-latest", "gemini")])
def test_gemini_models_that_cannot_stop_thinking_get_no_none(model: str, reasoning: str) -> None:
    """2.5 Pro and 3 answer reasoning_effort "none" with 400 "Budget 0 is invalid. This model only
    works in thinking mode." (a probe); PROTOCOL.md 1.7: "none" where supported, else omit."""
    dialect = dialect_for("gemini", model)
    assert dialect.reasoning == reasoning
    disabled = REASONING_STYLES[dialect.reasoning](Thinking("disabled"), None)
    assert disabled == (("none", ()) if reasoning == "gemini" else (None, ()))


@pytest.mark.parametrize("model,switch,sampling", [("kimi-k2.5", True, False), ("kimi-k2.6", True, False),
                                                   ("kimi-k2-thinking", False, True), ("kimi-k2-0905-preview", False, True),
                                                   ("moonshot-v1-8k", False, True)])
def test_moonshot_thinking_switch_and_sampling_follow_the_model(model: str, switch: bool, sampling: bool) -> None:
    """Kimi K2.5 and later have the thinking switch and take temperature 1 only ("invalid
    temperature: only 1 is allowed for this model"); the others have no switch."""
    dialect = dialect_for("moonshot", model)
    assert (dialect.reasoning == "switch", not dialect.drop_sampling) == (switch, sampling)


READ = {"name": "read", "description": "read a file", "input_schema": {"type": "object", "properties": {}}}


@pytest.mark.parametrize("choice,thinking,sent", [
    ({"type": "any"}, None, {"type": "disabled"}),
    ({"type": "tool", "name": "read"}, None, {"type": "disabled"}),
    ({"type": "auto"}, None, None),  # Kimi's own default: it thinks
    (None, None, None),
    ({"type": "auto"}, {"type": "enabled", "budget_tokens": 2048}, {"type": "enabled"}),
    ({"type": "any"}, {"type": "disabled"}, {"type": "disabled"}),
])
def test_kimi_forced_to_a_tool_is_told_not_to_think(choice: Any, thinking: Any, sent: Any) -> None:
    """probe J F3: Kimi K2.5 and later think unless told not to, and refuse a forced tool then
    ("tool_choice 'required' is incompatible with thinking enabled"); Anthropic's models do not
    think with a forced tool either."""
    body = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "read it"}], "tools": [READ]}
    body.update({k: v for k, v in (("tool_choice", choice), ("thinking", thinking)) if v is not None})
    chat = to_chat_request(parse_messages_request(body), model="kimi-k2.6",
                           dialect=dialect_for("moonshot", "kimi-k2.6")).request.to_dict()
    assert chat.get("thinking") == sent
    other = to_chat_request(parse_messages_request(body), model="moonshot-v1-8k",
                            dialect=dialect_for("moonshot", "moonshot-v1-8k")).request.to_dict()
    assert "thinking" not in other  # no switch on a model without one


def test_mistral_gets_no_user_field() -> None:
    """Mistral refuses fields it does not know (422 extra_forbidden), ``user`` among them: a round
    trip lost per model and process before the proxy learned it (a probe)."""
    assert DIALECTS["mistral"].user_field is None


@pytest.mark.parametrize("model, only", [
    ("gpt-5.4", True), ("gpt-5.4-mini", True), ("gpt-5.7", True), ("gpt-6", True), ("gpt-5.10", True),
    ("GPT-5.5", True), ("azure/gpt-5.6-sol", True),
    ("gpt-5", False), ("gpt-5.3", False), ("gpt-5.3-chat", False), ("gpt-6-chat-latest", False), ("gpt-4.1", False),
])
def test_openais_newer_models_take_tools_with_reasoning_only_on_responses(model: str, only: bool) -> None:
    """RESPONSES.md 5: from gpt-5.4 on; by pattern, so that a release the table does not name yet
    is not refused every Claude Code turn on Chat (probe AP N2)."""
    from claudeproxy.dialects import tools_only_on_responses

    assert tools_only_on_responses(model) is only
