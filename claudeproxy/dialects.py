"""Every provider quirk, in one declarative table (PROTOCOL.md section 5).

No I/O. A ``Dialect`` is a set of flags the translators consult; nothing else
in the package tests a provider's name for what it sends. What comes back is read
the same from every server, whatever shape any of them uses (usage inside the
choice, Groq's ``x_groq``: ``apis/chat/wire.py``; error messages: ``errors.py``,
``overflow.py``, ``apis/base.py``). ``detect_provider`` guesses the
dialect from the upstream URL, ``dialect_for(provider, model)`` applies the
model-specific overrides (OpenAI reasoning models), and ``REASONING_BUCKETS``
turns an Anthropic thinking budget into an OpenAI effort.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlsplit


@dataclasses.dataclass(frozen=True)
class Dialect:
    name: str = "generic"
    # Role used for the system prompt: system, developer or user (merged into the first user turn).
    system_role: str = "system"
    # max_tokens or max_completion_tokens.
    max_tokens_field: str = "max_tokens"
    # Most stop strings the upstream accepts; None = all. OpenAI's schema allows 4, and an
    # unknown server is held to the official schema (servers known to take more say so below).
    max_stop: Optional[int] = 4
    # Send stop at all. OpenAI's reasoning models refuse it ("Unsupported parameter: 'stop'");
    # the proxy then matches the stop strings itself (apis/stops.py), as it does past max_stop.
    sends_stop: bool = True
    # Drop temperature/top_p (OpenAI reasoning models reject them).
    drop_sampling: bool = False
    pass_top_k: bool = False
    # The field the end user's id goes in (None: not sent). OpenAI's Chat Completions replaced
    # ``user`` by ``safety_identifier`` (its API reference), which its Responses API already takes.
    user_field: Optional[str] = "user"
    # Ask for stream_options.include_usage. Off where the server refuses the field and sends
    # usage in the last chunk anyway (Mistral).
    stream_usage: bool = True
    # How thinking/effort is requested (apis/chat/request.py REASONING_STYLES):
    # effort, explicit, ollama, gemini, openrouter, deepseek, switch, groq, template, mistral, none.
    reasoning: str = "effort"
    # The model thinks unless told not to (DeepSeek V4: "Thinking mode is enabled by default"): a
    # request that asks for no thinking switches it off, as no thinking means on Anthropic's API.
    thinks_unless_told: bool = False
    # How assistant thinking goes back upstream: drop, reasoning_content, reasoning_content_all, reasoning,
    # both (reasoning and reasoning_content, each with the text).
    reasoning_history: str = "drop"
    # What reasoning_content_all sends on a tool-call turn that has no thinking (a turn from
    # another model, thinking the client left out). DeepSeek takes ""; Moonshot takes "" for
    # missing and wants at least a space.
    reasoning_placeholder: str = ""
    # Assistant content when there is no text but tool calls: None (null) or "".
    assistant_empty_content: Optional[str] = None
    # User content must be a plain string (text-only servers).
    string_content_only: bool = False
    # PDF documents as OpenAI "file" parts; otherwise a text placeholder.
    supports_file_parts: bool = False
    # The image media types the server decodes (None: Anthropic's four), and whether it fetches an
    # image URL itself. Another image goes as a text placeholder: refused, it stayed in the history
    # and failed every later turn.
    image_types: Optional[Tuple[str, ...]] = None
    image_urls: bool = True
    # Say parallel_tool_calls: true where the client did not forbid them: llama.cpp's default is
    # false, and its tool grammar then lets the model make one call a turn (Anthropic's default: many).
    asks_parallel_calls: bool = False
    # Takes tool_choice's object form (a named function). llama.cpp reads only a string there and
    # took the object for "auto" ("Wrong type supplied for parameter 'tool_choice'"): a forced tool
    # went unforced. Without it, the named tool alone is offered, "required".
    names_a_tool: bool = True
    # Cuts a prompt longer than its context to fit, without a word (Ollama: to num_ctx, keeping the
    # end), and counts only what it kept: such a count is said, and teaches the estimates nothing.
    cuts_prompts: bool = False
    # Tool-call ids must be 9 alphanumerics (Mistral).
    short_tool_ids: bool = False
    # The longest tool-call id taken (OpenAI: 40, "string too long. Expected a string with maximum
    # length 40"); a longer one, made elsewhere (another provider, a gateway), is shortened alike in
    # the call and its result. None: no limit known.
    tool_id_limit: Optional[int] = None
    # Insert an assistant message between a tool message and a user message (Mistral).
    bridge_tool_to_user: bool = False
    # Role for system turns after the conversation began; None keeps "system". Mistral wants
    # the last message to be user or tool, and no system turn after a tool result.
    late_system_role: Optional[str] = None
    # Mark a final assistant message as a prefill with "prefix": true.
    prefill_prefix: bool = False
    # Say a final assistant message is to be continued (vLLM's continue_final_message, without a
    # generation prompt): otherwise a new assistant turn opens after it, and the answer does not
    # continue the client's prefill, as Anthropic's does.
    prefill_continue: bool = False
    # JSON-schema sanitizer for tool parameters: none or gemini.
    schema_sanitizer: str = "none"
    # Content that starts with <think> carries the reasoning (vLLM without a parser, Groq raw).
    think_tags: bool = False
    # Authorization header style: bearer or azure (api-key header).
    auth: str = "bearer"
    # The environment variables the provider's own SDKs and docs keep its key in, in the order
    # those SDKs read them: the default key of an upstream recognised as this provider
    # (``default_key_variables``), the first one set.
    key_env: Tuple[str, ...] = ()
    # Structured output: json_schema (response_format with the schema), or json_object (only
    # JSON mode exists; the schema goes into the system prompt as an instruction).
    structured_output: str = "json_schema"
    # Stream requests that carry tools; False = call non-streaming and synthesise the stream.
    stream_with_tools: bool = True
    # Echo Gemini's thought_signature on assistant tool calls (extra_content.google). Other
    # servers may reject the unknown field, e.g. after a session moves from Gemini to OpenAI.
    thought_signatures: bool = False
    # The Responses API here runs OpenAI's hosted web_search tool (Azure refuses it:
    # "Hosted tool 'web_search_preview' is not supported", RESPONSES.md 7.10).
    hosted_web_search: bool = False
    # OpenAI's Responses API is served here too: a chat route to a model served only there
    # (gpt-5-codex, o3-pro) switches to it (routing; RESPONSES.md 5). A gateway may not.
    serves_responses: bool = False
    # Merge consecutive user messages into one. DeepSeek reasoner and Mistral-family chat
    # templates reject two in a row (PROTOCOL.md 1.2 step 4), and an unknown server may too.
    # A merge rewrites the last user message when the next request adds another user turn
    # right after it, so the dialects known to take consecutive user messages (OpenAI's
    # API does) keep them apart: each message then translates the same whatever follows.
    merge_user_turns: bool = True
    # Top-level field that carries the session's prompt-cache key, or None when the provider
    # documents none: prompt_cache_key (OpenAI, Azure OpenAI, Mistral) or session_id
    # (OpenRouter's sticky routing key, which keeps a session on the provider with its cache).
    cache_key_field: Optional[str] = None
    # The api-version an Azure deployment of this model needs when the provider keeps the
    # default one: o-series and gpt-5 deployments answer 400 "enabled only for api versions
    # 2024-12-01-preview and later" to the GA 2024-10-21.
    azure_api_version: Optional[str] = None
    # The usage field in which the upstream reports what it billed for the call, in USD: the call
    # record takes it as the call's cost instead of pricing the tokens (``cost.billed_cost``).
    billed_cost_field: Optional[str] = None
    # The client's prompt-cache marks (cache_control) go on with the text they mark: on the system
    # prompt, a user text part, a tool message and at the top level (PROTOCOL.md 1.4 lets the
    # openrouter dialect do it for Anthropic-served models, which cache only at marks).
    cache_marks: bool = False


_BASE = Dialect()

DIALECTS: Dict[str, Dialect] = {
    "generic": _BASE,
    # Chat models (gpt-4o, gpt-4.1) reject reasoning_effort: only reasoning models get it (MODEL_RULES).
    # prompt_cache_key: developers.openai.com/api/docs/guides/prompt-caching.
    "openai": dataclasses.replace(
        _BASE, name="openai", supports_file_parts=True, reasoning="none", merge_user_turns=False,
        cache_key_field="prompt_cache_key", user_field="safety_identifier", hosted_web_search=True,
        serves_responses=True, key_env=("OPENAI_API_KEY",),
        tool_id_limit=40,
    ),
    # Azure also hosts other vendors' models (Foundry), which answer 400 "Unrecognized request
    # argument supplied: prompt_cache_key" (vectorize-io/hindsight#3518, zed-industries/zed#52000):
    # only OpenAI model names get OpenAI's key and message rules (MODEL_RULES).
    "azure": dataclasses.replace(_BASE, name="azure", supports_file_parts=True, auth="azure", reasoning="none",
                                 serves_responses=True, key_env=("AZURE_OPENAI_API_KEY",), tool_id_limit=40),
    # session_id: openrouter.ai/docs/guides/best-practices/prompt-caching ("Using session_id for
    # sticky sessions": a top-level body field of at most 256 characters). usage.cost:
    # openrouter.ai/docs/use-cases/usage-accounting ("Cost in credits", in every response and in a
    # stream's last chunk without any request parameter: usage.include is deprecated). Its
    # credits are USD, and the host-prefixed names it serves have no built-in price.
    "openrouter": dataclasses.replace(
        _BASE, name="openrouter", reasoning="openrouter", reasoning_history="reasoning",
        supports_file_parts=True, pass_top_k=True, max_stop=None, cache_key_field="session_id",
        key_env=("OPENROUTER_API_KEY",), billed_cost_field="cost",
    ),
    "deepseek": dataclasses.replace(
        _BASE, name="deepseek", reasoning="deepseek", thinks_unless_told=True, reasoning_history="reasoning_content_all",
        assistant_empty_content="", string_content_only=True, max_stop=16,
        # DeepSeek answers 400 "This response_format type is unavailable now" to json_schema.
        structured_output="json_object", key_env=("DEEPSEEK_API_KEY",),
    ),
    # Groq's reasoning fields differ per model (console.groq.com/docs/reasoning): its chat models
    # refuse both ("reasoning_format is not supported with this model"), gpt-oss takes
    # reasoning_effort low/medium/high and no reasoning_format, qwen3 takes reasoning_format and
    # an effort of none or default only (MODEL_RULES).
    "groq": dataclasses.replace(_BASE, name="groq", reasoning="none", user_field=None, key_env=("GROQ_API_KEY",)),
    # prompt_cache_key: docs.mistral.ai/studio-api/conversations/advanced/prompt-caching.
    # Mistral answers 422 extra_forbidden to stream_options and always puts the usage in the last
    # chunk (docs.mistral.ai, 2024-01-16 release note; openai/openai-agents-python#442).
    "mistral": dataclasses.replace(
        _BASE, name="mistral", short_tool_ids=True, bridge_tool_to_user=True, prefill_prefix=True,
        # Mistral refuses fields it does not know (422 extra_forbidden), user among them.
        late_system_role="user", stream_usage=False, user_field=None,
        reasoning="none", cache_key_field="prompt_cache_key", key_env=("MISTRAL_API_KEY",),
    ),
    # Moonshot (Kimi): thinking is switched by {"thinking": {"type": "enabled"|"disabled"}}, on by
    # default (platform.kimi.ai/docs/api/models-overview); reasoning comes as reasoning_content and,
    # with thinking on, must come back on every assistant tool-call turn: without it Moonshot
    # answers 400 "thinking is enabled but reasoning_content is missing in assistant tool call
    # message at index N" (platform.kimi.ai/docs/guide/use-kimi-k2-thinking-model; continuedev/
    # continue#11600). Kimi models get it on every tool turn (MODEL_RULES); "" counts as missing
    # there (theopenco/llmgateway#2093), so a turn without thinking gets a space. Usage inside the
    # final choice is read for every server (apis/chat/wire.py). Its stop limit is not documented
    # where we could check it: the default 4 stays, and the proxy matches the rest.
    "moonshot": dataclasses.replace(
        _BASE, name="moonshot", reasoning="none", reasoning_history="reasoning_content",
        reasoning_placeholder=" ", key_env=("MOONSHOT_API_KEY",),
    ),
    "gemini": dataclasses.replace(
        _BASE, name="gemini", schema_sanitizer="gemini", user_field=None, reasoning="gemini", thought_signatures=True,
        # google-genai reads both, GOOGLE_API_KEY first when both are set (_api_client.get_env_api_key).
        key_env=("GOOGLE_API_KEY", "GEMINI_API_KEY"),
    ),
    # Ollama answers 400 when a non-thinking model is asked to think: only explicit budgets map. A
    # thinking model (Qwen3, DeepSeek-R1) thinks unless told not to (server/routes.go: an unset think
    # is true): a request without thinking, hidden from the client, spent its max_tokens on it and
    # came back empty; "none" is its off switch (openai/openai.go), taken by any model.
    # Its images are data URLs of JPEG, PNG or WebP only: a GIF is "invalid image input", an http(s)
    # URL "image URLs are not currently supported" (openai/openai.go decodeImageURL).
    # It reads an assistant turn's reasoning back from `reasoning` (FromChatRequest: Thinking:
    # msg.Reasoning), which gpt-oss's template renders for a tool loop's turns.
    "ollama": dataclasses.replace(_BASE, name="ollama", reasoning="ollama", thinks_unless_told=True, max_stop=None,
                                  image_types=("image/jpeg", "image/png", "image/webp"), image_urls=False,
                                  cuts_prompts=True, reasoning_history="reasoning"),
    # vLLM and llama.cpp take chat_template_kwargs.enable_thinking, on in Qwen3's templates by default.
    # vLLM reads an assistant turn's reasoning back from `reasoning` since it renamed the field
    # (chat_utils._parse_chat_message_content; its docs: "reasoning used to be called
    # reasoning_content"), and from reasoning_content before: both go, or the thinking of a tool
    # loop's turns was lost to the template without a word (probe AL D1).
    # Started without --reasoning-parser (the usual Qwen3 case), it streams the model's <think>...</think>
    # in the content (PROTOCOL.md 1, item 1): read as thinking, as llama.cpp's (probe AN 3).
    "vllm": dataclasses.replace(
        _BASE, name="vllm", reasoning="template", thinks_unless_told=True, reasoning_history="both", think_tags=True,
        pass_top_k=True, max_stop=None, prefill_continue=True,
    ),
    "lmstudio": dataclasses.replace(
        _BASE, name="lmstudio", reasoning="none", reasoning_history="reasoning_content", max_stop=None
    ),
    # llama.cpp's server reads reasoning_content back from assistant messages (common/chat.cpp), and
    # Qwen3's template shows it to the model for the turns since the last user message: the tool loop.
    "llamacpp": dataclasses.replace(_BASE, name="llamacpp", reasoning="template", thinks_unless_told=True,
                                    reasoning_history="reasoning_content", think_tags=True, max_stop=None,
                                    asks_parallel_calls=True, names_a_tool=False),
}

# Azure OpenAI's newest GA data-plane version (learn.microsoft.com azure/ai-foundry/openai/reference).
DEFAULT_AZURE_API_VERSION = "2024-10-21"

# Model-specific overrides: (dialect names, model regex, changes). OpenAI's
# reasoning models reject max_tokens, temperature, top_p (FIELD-NOTES 6) and stop.
_OPENAI_REASONING = {
    "max_tokens_field": "max_completion_tokens",
    "drop_sampling": True,
    "sends_stop": False,
    "system_role": "developer",
    "reasoning": "effort",
    "azure_api_version": "2025-04-01-preview",
}
# OpenAI's reasoning models by name, for both of its APIs (RESPONSES.md 5): o1, o3-mini,
# o4-mini-deep-research...; gpt-5*, but not gpt-5-chat-latest or gpt-5.1-chat (chat models); codex-mini.
# Any case: an Azure deployment may be named GPT-5.
OPENAI_REASONING_NAME = r"(?i)^(?:o\d|gpt-5(?!.*-chat)|codex)"
# The least reasoning each of them takes (RESPONSES.md 5): a client asking for no thinking gets it.
# Left out, the model reasons at its default (medium before gpt-5.1), and Claude Code's auto-mode
# check (thinking disabled, max_tokens 64) came back empty and was sent again five times (probe
# AN 5). gpt-5.1 on take "none", gpt-5 "minimal", the o-series and codex models "low"; gpt-5-pro
# only "high" and the deep-research models only "medium" (nothing is sent: their one effort).
_LEAST_EFFORTS = ((r"^gpt-5(?:\.\d+)?-pro|.*-deep-research", None), (r"^(?:gpt-5(?:\.\d+)?-)?codex", "low"),
                  (r"^gpt-5\.[1-9]", "none"), (r"^gpt-5", "minimal"), (r"^o\d", "low"))


# From gpt-5.4 on (the chat variants aside), OpenAI takes function tools with reasoning only on the
# Responses API (RESPONSES.md 5): Claude Code sends both every turn. By pattern, so that the next
# release is not refused every turn until a table names it (probe AP N2).
_TOOLS_ON_RESPONSES = re.compile(r"(?i)^gpt-(?:5\.(?:[4-9]|[1-9]\d)|[6-9]|[1-9]\d)(?!.*-chat)")


def tools_only_on_responses(model: str) -> bool:
    """Does OpenAI take ``model``'s function tools with reasoning only on the Responses API?"""
    return bool(_TOOLS_ON_RESPONSES.match(model.strip().rsplit("/", 1)[-1]))


def least_effort(model: str) -> Optional[str]:
    """The least reasoning effort an OpenAI reasoning model takes (its name after any ``provider/``
    prefix), or None: another model, or one whose least is not known."""
    name = model.rsplit("/", 1)[-1].lower()
    if not re.match(OPENAI_REASONING_NAME, name):
        return None
    return next((effort for pattern, effort in _LEAST_EFFORTS if re.match(pattern, name)), None)
# What an OpenAI model gets on Azure too (learn.microsoft.com azure/foundry/openai/how-to/prompt-caching).
_OPENAI_MODEL = {"cache_key_field": "prompt_cache_key", "merge_user_turns": False}
# The first rule that matches a model applies, alone.
MODEL_RULES: Tuple[Tuple[Tuple[str, ...], str, Dict[str, object]], ...] = (
    # reasoning_effort came with o1 and o3-mini: o1-mini and o1-preview refuse it.
    (("openai", "azure"), r"(?i)^(o1-mini|o1-preview)", {**_OPENAI_REASONING, "system_role": "user", "reasoning": "none",
                                                      **_OPENAI_MODEL}),
    (("openai", "azure"), OPENAI_REASONING_NAME, {**_OPENAI_REASONING, **_OPENAI_MODEL}),
    # gpt-5-chat on Azure: no reasoning model, but of the GPT-5 series the GA api-version predates.
    (("azure",), r"(?i)^gpt-5.*-chat", {"azure_api_version": "2025-04-01-preview", **_OPENAI_MODEL}),
    (("azure",), r"^(gpt-|chatgpt-)", _OPENAI_MODEL),
    (("openrouter",), r"^openai/(o\d|gpt-5)", {"drop_sampling": True}),
    # Claude on OpenRouter caches only where the request marks it (openrouter.ai/docs/guides/
    # best-practices/prompt-caching: cache_control on text parts, or at the top level); without
    # the marks every Claude Code turn paid its whole prompt at the full input price.
    (("openrouter",), r"^anthropic/", {"cache_marks": True}),
    # OpenAI's chat models behind a URL the dialects do not know (a gateway, a local relay) refuse
    # reasoning_effort as on OpenAI: each session would pay a refused round trip to learn it.
    (("generic",), r"^(openai/)?(gpt-4|gpt-3\.5|chatgpt-)", {"reasoning": "none"}),
    # Gemini behind a gateway (LiteLLM, Vertex AI's OpenAI endpoint: google/gemini-3-pro) sends its
    # calls' thought signatures as Google's own endpoint does, and Gemini 3 refuses a call sent back
    # without its own; the gateway's other models (gpt-4.1) must not get them (OpenAI refuses the field).
    (("generic",), r"(?i)(^|/)gemini-", {"thought_signatures": True}),
    # Kimi's thinking models (kimi-k2-thinking, kimi-k2.5, kimi-k2.6...); moonshot-v1 models never think.
    # The thinking switch is Kimi K2.5's and later's (platform.kimi.ai/docs/api/models-overview), and
    # they take only temperature 1 ("invalid temperature: only 1 is allowed for this model").
    (("moonshot",), r"^kimi-k(2\.[5-9]|[3-9])",
     {"reasoning_history": "reasoning_content_all", "reasoning": "switch", "drop_sampling": True}),
    (("moonshot",), r"^kimi-", {"reasoning_history": "reasoning_content_all"}),
    # deepseek-reasoner is the name of DeepSeek's thinking mode: a client naming it wants it on.
    (("deepseek",), r"reasoner", {"thinks_unless_told": False}),
    (("groq",), r"^(openai/)?gpt-oss", {"reasoning": "explicit"}),
    # Mistral's models with adjustable reasoning (docs.mistral.ai: Small 4, Medium 3.5, Large 4): a
    # client's thinking had no effect there.
    (("mistral",), r"^(mistral-small-(latest|2603)|mistral-medium-3-5|mistral-large-4)", {"reasoning": "mistral"}),
    (("groq",), r"^(qwen/)?qwen3", {"reasoning": "groq", "think_tags": True}),
    # Gemini 2.5 Pro and 3 cannot stop thinking: "none" (a budget of 0) is a 400 there, so a client's
    # thinking "disabled" sends nothing (PROTOCOL.md 1.7: "none" where supported, else omit).
    (("gemini",), r"^(models/)?gemini-(2\.5-pro|[3-9]|pro-latest)", {"reasoning": "explicit"}),
)

# Upstream host -> dialect (first match wins).
_HOST_RULES: Tuple[Tuple[str, str], ...] = (
    (r"(^|\.)openai\.azure\.com$|(^|\.)cognitiveservices\.azure\.com$", "azure"),
    (r"(^|\.)api\.openai\.com$", "openai"),
    (r"(^|\.)openrouter\.ai$", "openrouter"),
    (r"(^|\.)deepseek\.com$", "deepseek"),
    (r"(^|\.)groq\.com$", "groq"),
    (r"(^|\.)mistral\.ai$", "mistral"),
    (r"(^|\.)moonshot\.(ai|cn)$", "moonshot"),
    (r"^generativelanguage\.googleapis\.com$", "gemini"),
)
# api.x.ai (Grok) stays generic, on purpose. Which of its models take reasoning_effort changes
# with each release: grok-3-mini, grok-4.3 and grok-4.5 take it; grok-3, grok-4, grok-4-fast and
# grok-code-fast-1 answer 400 "Model grok-4 does not support parameter reasoningEffort"
# (BerriAI/litellm#16265, NousResearch/hermes-agent#23435, vercel/ai @ai-sdk/xai 4.0.0-canary.61).
# A table of them would be wrong within months, either way round. The refusal itself is
# recognised (apis/base.py refused_fields): a model that refuses costs one round trip per
# server, and never gets the field again.
_PORT_RULES = {11434: "ollama", 1234: "lmstudio"}
# vLLM's default port 8000 (and SGLang's 30000, which takes vLLM's fields: chat_template_kwargs,
# top_k, reasoning_content), only on a machine of one's own (loopback, a private address, a
# one-label name such as a compose service's): a team's gateway on :8000 serves other models,
# Gemini's among them, whose thought signatures the vLLM dialect does not carry. Not 8080,
# llama.cpp's, which many other servers share.
_LOCAL_PORT_RULES = {8000: "vllm", 30000: "vllm"}

# The Chat Completions base URL ``--provider NAME`` means without --upstream: each provider's own
# (its key went to api.openai.com, the default, without a word), and the local servers' default
# ports. Not Azure's, which is a resource of the user's own.
PROVIDER_URLS = {
    "openai": "https://api.openai.com/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "deepseek": "https://api.deepseek.com",
    "groq": "https://api.groq.com/openai/v1",
    "mistral": "https://api.mistral.ai/v1",
    "moonshot": "https://api.moonshot.ai/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
    "ollama": "http://localhost:11434/v1",
    "lmstudio": "http://localhost:1234/v1",
    "llamacpp": "http://localhost:8080/v1",
    "vllm": "http://localhost:8000/v1",
}

# The path an OpenAI-compatible API lives under on the hosts that serve it under one path only:
# a URL that names the host alone gets 404 for every request ("/chat/completions" is added to it).
# Not DeepSeek's, which answers with /v1 and without.
_API_PATHS: Tuple[Tuple[str, str], ...] = (
    (r"^api\.openai\.com$", "/v1"),
    (r"^openrouter\.ai$", "/api/v1"),
    (r"^api\.groq\.com$", "/openai/v1"),
    (r"^api\.mistral\.ai$", "/v1"),
    (r"^api\.x\.ai$", "/v1"),
    (r"^api\.moonshot\.(ai|cn)$", "/v1"),
    (r"^generativelanguage\.googleapis\.com$", "/v1beta/openai"),
)


def missing_api_path(url: str) -> Optional[str]:
    """The path an OpenAI-compatible URL naming a known host alone lacks (``/v1`` for
    api.openai.com), or None."""
    parts = urlsplit(url)
    if parts.path.strip("/"):
        return None
    host = (parts.hostname or "").lower()
    return next((path for pattern, path in _API_PATHS if re.search(pattern, host)), None)


# Anthropic thinking budget -> OpenAI reasoning_effort (PROTOCOL.md 1.7).
REASONING_BUCKETS: Tuple[Tuple[int, str], ...] = ((4096, "low"), (16384, "medium"))


def effort_for_budget(budget: int) -> str:
    for limit, effort in REASONING_BUCKETS:
        if budget < limit:
            return effort
    return "high"


def detect_provider(upstream_url: str) -> str:
    """Best guess of the dialect from the upstream base URL; ``generic`` otherwise."""
    parts = urlsplit(upstream_url)
    host = (parts.hostname or "").lower()
    for pattern, name in _HOST_RULES:
        if re.search(pattern, host):
            return name
    try:
        port = parts.port
    except ValueError:
        port = None
    if port in _LOCAL_PORT_RULES and _is_own_machine(host):
        return _LOCAL_PORT_RULES[port]
    return _PORT_RULES.get(port or 0, "generic")


def _is_own_machine(host: str) -> bool:
    """Loopback, a private or link-local address, or a name of one label (``vllm``, ``gpu-box``)."""
    if host == "localhost" or (host and "." not in host and ":" not in host):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def default_key_variables(provider: str, paired_with_openai_url: bool) -> Tuple[str, ...]:
    """The environment variables an upstream's key is taken from when no key flag says (in order).

    A provider with variables of its own (Groq's GROQ_API_KEY, Google's GOOGLE_API_KEY and
    GEMINI_API_KEY...) gets only those: with $OPENAI_API_KEY exported for OpenAI, as it so often
    is, an upstream at Groq or Google would otherwise get the OpenAI key. $OPENAI_API_KEY is the OpenAI-compatible convention for the rest
    (a gateway, a local server), and for any upstream that came from $OPENAI_BASE_URL, its pair.
    """
    own = DIALECTS[provider].key_env if provider in DIALECTS else ()
    if not own:
        return ("OPENAI_API_KEY",)
    if paired_with_openai_url and "OPENAI_API_KEY" not in own:
        return (*own, "OPENAI_API_KEY")
    return own


def key_variables() -> Tuple[str, ...]:
    """Every variable a default upstream key may come from: masked in what start-up errors print."""
    return tuple(sorted({"OPENAI_API_KEY"}.union(*(d.key_env for d in DIALECTS.values()))))


def azure_api_version(setting: str, dialect: Dialect) -> str:
    """The api-version to send: the setting, unless it is the GA default a model cannot use."""
    if dialect.azure_api_version and setting == DEFAULT_AZURE_API_VERSION:
        return dialect.azure_api_version
    return setting


def dialect_for(provider: str, model: str, reasoning: Optional[bool] = None) -> Dialect:
    """The dialect for ``provider`` with the overrides that apply to ``model``.

    ``reasoning``: a models table's word on whether an OpenAI model reasons, where its name does
    not tell (an Azure deployment of gpt-5 named ``prod-coder`` was sent ``max_tokens`` and the
    GA api-version, and every call failed); None: the name's rule.
    """
    changes = _rule_for(provider, model)
    if reasoning is not None and provider in ("openai", "azure"):
        if reasoning != (changes is not None and changes.get("max_tokens_field") == "max_completion_tokens"):
            changes = {**_OPENAI_REASONING, **_OPENAI_MODEL} if reasoning else _OPENAI_MODEL
    return dataclasses.replace(DIALECTS[provider], **changes) if changes else DIALECTS[provider]  # type: ignore[arg-type]


def _rule_for(provider: str, model: str) -> Optional[Dict[str, object]]:
    """The changes of the first model rule for ``provider`` that ``model`` matches, if any."""
    for names, pattern, changes in MODEL_RULES:
        if provider in names and re.search(pattern, model):
            return changes
    return None


# --------------------------------------------------------------------------
# Credentials and betas (every API).

# Anthropic reads the key from x-api-key. The native Anthropic endpoints of DeepSeek,
# Moonshot, Zhipu, MiniMax and OpenRouter document ANTHROPIC_AUTH_TOKEN, which Anthropic
# clients send as "Authorization: Bearer", and local servers (llama.cpp, vLLM) check Bearer.
_ANTHROPIC_HOST_RE = re.compile(r"(^|\.)anthropic\.com$")


def is_anthropic_host(url: str) -> bool:
    return bool(_ANTHROPIC_HOST_RE.search((urlsplit(url).hostname or "").lower()))


def auth_style(api: str, url: str, dialect: Optional[str], configured: Optional[str] = None) -> str:
    """How a provider takes its key: bearer, x-api-key or api-key (Azure)."""
    if configured:
        return configured
    if api == "messages":
        return "x-api-key" if is_anthropic_host(url) else "bearer"
    return "api-key" if DIALECTS[dialect or detect_provider(url)].auth == "azure" else "bearer"


def forwards_betas(url: str, policy: str) -> bool:
    """Whether the client's anthropic-beta header goes to a messages provider.

    "auto" forwards to Anthropic only: several native endpoints reject betas they do not know.
    """
    return policy == "forward" or (policy == "auto" and is_anthropic_host(url))


def client_key(headers: Any) -> Tuple[str, str]:
    """The key an Anthropic client sent and the header it came in: ``x-api-key``, else
    ``Authorization: Bearer`` (the key without the scheme); ("", "") when it sent neither."""
    given = headers.get("x-api-key") or ""
    if given:
        return "x-api-key", given
    auth = headers.get("Authorization") or ""
    if auth[:7].lower() == "bearer ":
        return "Authorization", auth[7:]
    return "", ""


# The header each auth style sends the key in (lower case, as compared with a provider's own headers).
KEY_HEADERS = {"bearer": "authorization", "x-api-key": "x-api-key", "api-key": "api-key"}


def auth_header(style: str, token: str) -> Tuple[Tuple[str, str], ...]:
    if not token:
        return ()
    if style == "bearer":
        return (("Authorization", f"Bearer {token}"),)
    return ((KEY_HEADERS[style], token),)
