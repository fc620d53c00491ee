"""The command line: flags and environment -> settings, one-line errors, a real process.

The issue's CLI contract: defaults from OPENAI_BASE_URL / OPENAI_API_KEY, a bad
URL or flag exits 2 with exactly one line on stderr, --help and --version,
and ``python -m claudeproxy`` printing ``claudeproxy listening on
http://HOST:PORT -> UPSTREAM`` first on stdout. RELIABILITY.md S6 (header
validation), S9 (URL validation), S17 and F24 (SIGTERM), section 5 items 1, 5, 6.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import claudeproxy
from claudeproxy import cli
from claudeproxy.config import Provider, Route, RouteTarget
from conftest import ROOT, UPSTREAM_KEY, minimal_request, request
from fakes import Gate, chunk, completion, json_reply, sse_reply
from sse_checks import assert_valid_event_sequence, dechunk, events_of

ENV_KEY = "sk-ENV-SENTINEL-abcdef012345"


def run_main(argv: List[str], environ: Optional[Dict[str, str]] = None) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(argv, environ=environ if environ is not None else {}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def served(monkeypatch: Any) -> List[Any]:
    """Replace the blocking ``serve`` with a recorder: main() returns 0 with the settings it would serve."""
    configs: List[Any] = []

    def fake_serve(config: Any, stdout: Any, metrics_path: Optional[str] = None) -> int:
        configs.append(config)
        return 0

    monkeypatch.setattr(cli, "serve", fake_serve)
    return configs


def assert_usage_error(code: int, out: str, err: str, *parts: str) -> None:
    assert code == 2, (code, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert err.endswith("\n")
    assert lines[0].startswith("claudeproxy: error: "), err
    for part in parts:
        assert part in lines[0], lines[0]


# ---------------------------------------------------------------------------
# Defaults and the environment.


def test_defaults_without_environment(served: List[Any]) -> None:
    # The default upstream is OpenAI's, which needs a key: without one the start stops (exit 2)
    # instead of serving 401s, which Claude Code reads as its own login gone.
    code, out, err = run_main([])
    assert (code, out) == (2, "") and served == []
    assert err == ("claudeproxy: error: the upstream (api.openai.com) gets no API key, which it needs "
                   "(set OPENAI_API_KEY, or give --api-key-env)\n"), err
    code, out, err = run_main([], {"OPENAI_API_KEY": ENV_KEY})
    assert (code, out, err) == (0, "", "")
    config = served[0]
    assert config.upstream == "https://api.openai.com/v1"
    assert config.token() == ENV_KEY
    assert (config.host, config.port) == ("127.0.0.1", 8082)
    assert config.model is None and config.proxy is None and config.headers == ()
    assert config.auth_key is None


def test_defaults_from_environment(served: List[Any]) -> None:
    env = {"OPENAI_BASE_URL": "https://example.test/api/v1", "OPENAI_API_KEY": ENV_KEY}
    assert run_main([], env)[0] == 0
    assert served[0].upstream == "https://example.test/api/v1"
    assert served[0].token() == ENV_KEY


def test_flags_win_over_environment(served: List[Any]) -> None:
    env = {"OPENAI_BASE_URL": "https://example.test/v1", "OPENAI_API_KEY": ENV_KEY}
    argv = ["--upstream", " http://127.0.0.1:9/v1 ", "--api-key", "sk-flag-key-0000000", "--port", "0",
            "--model", "gpt-test", "--header", "X-Title: my app", "--header", "HTTP-Referer:https://e.org",
            "--proxy", "http://127.0.0.1:3128", "--allowed-host", "Box.LAN", "--max-concurrency", "3",
            "--shutdown-grace", "0.5"]
    assert run_main(argv, env)[0] == 0
    config = served[0]
    assert config.upstream == "http://127.0.0.1:9/v1"  # leading blanks stripped (S9)
    assert config.token() == "sk-flag-key-0000000"
    assert config.port == 0 and config.model == "gpt-test"
    assert config.headers == (("X-Title", "my app"), ("HTTP-Referer", "https://e.org"))
    assert config.proxy == "http://127.0.0.1:3128"
    assert config.allowed_hosts == ("box.lan",)
    assert config.max_concurrency == 3 and config.shutdown_grace == 0.5


@pytest.mark.parametrize("upstream, variable", [
    ("https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    ("https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"),
    ("https://generativelanguage.googleapis.com/v1beta/openai", "GOOGLE_API_KEY"),  # google-genai reads both
    ("https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    ("https://api.moonshot.ai/v1", "MOONSHOT_API_KEY"),
    ("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    ("https://res.openai.azure.com", "AZURE_OPENAI_API_KEY"),
])
def test_an_openai_key_in_the_environment_never_goes_to_another_providers_host(
        served: List[Any], upstream: str, variable: str) -> None:
    # $OPENAI_API_KEY exported for OpenAI, then --upstream at Groq or Google as the README's examples
    # show: that provider's own variable is the key, and without it none (the start stops, naming
    # that variable), never the OpenAI key handed to another company.
    code, _, err = run_main(["--upstream", upstream], {"OPENAI_API_KEY": ENV_KEY})
    assert code == 2 and served == [] and variable in err and not re.search(r"(?<![A-Z_])OPENAI_API_KEY", err), err
    assert run_main(["--upstream", upstream], {"OPENAI_API_KEY": ENV_KEY, variable: "sk-own-key-1234567"})[0] == 0
    assert served[0].token() == "sk-own-key-1234567" and served[0].key_source == f"${variable}"


def test_openai_key_still_serves_openai_gateways_and_its_own_base_url(served: List[Any]) -> None:
    env = {"OPENAI_API_KEY": ENV_KEY}
    for upstream in ("https://api.openai.com/v1", "https://gateway.corp.example/v1", "http://localhost:11434/v1"):
        assert run_main(["--upstream", upstream], env)[0] == 0
        assert served[-1].token() == ENV_KEY, upstream
    # OPENAI_BASE_URL and OPENAI_API_KEY are a pair (the OpenAI SDKs' convention): set together for
    # Groq, the key is meant for Groq.
    assert run_main([], {**env, "OPENAI_BASE_URL": "https://api.groq.com/openai/v1"})[0] == 0
    assert served[-1].token() == ENV_KEY


def test_a_keyless_known_provider_is_told_its_own_variable(served: List[Any]) -> None:
    code, out, err = run_main(["--upstream", "https://api.groq.com/openai/v1"])
    assert_usage_error(code, out, err, "the upstream (api.groq.com) gets no API key, which it needs (set GROQ_API_KEY,")


GEMINI_URL = "https://generativelanguage.googleapis.com/v1beta/openai"


def test_an_empty_api_key_flag_is_named_in_the_keyless_warning(served: List[Any]) -> None:
    """``--api-key ''`` sends no key although $OPENAI_API_KEY is set: "set OPENAI_API_KEY" would be
    advice the user already followed; the warning names the flag that wins."""
    env = {"OPENAI_API_KEY": "sk-openai-1234567"}
    code, out, err = run_main(["--upstream", "https://api.openai.com/v1", "--api-key", ""], env)
    assert (code, out, err) == (2, "", "claudeproxy: error: the upstream (api.openai.com) gets no API key, which it "
                                       "needs (--api-key is empty: give a key, or leave it out to use OPENAI_API_KEY)\n")
    # At a host not known to need one (a gateway may let callers in by address), a warning at start.
    assert run_main(["--upstream", "https://gateway.corp.example/v1", "--api-key", ""], env)[0] == 0
    lines = [line for line in _start_warnings(served[0], env) if "gets no API key" in line]
    assert lines == ["the upstream (gateway.corp.example) gets no API key: expect 401s "
                     "(--api-key is empty: give a key, or leave it out to use OPENAI_API_KEY)"], lines


def test_a_keyless_messages_upstream_gets_the_clients_key_unless_the_proxy_has_its_own(served: List[Any]) -> None:
    """Without --auth-key the client's own key goes to a Messages API upstream that has none (the
    documented switch); with it, nothing would: every call a 401, and the start said nothing."""
    assert run_main(["--passthrough"])[0] == 0
    code, out, err = run_main(["--passthrough", "--auth-key", "a-long-client-key-0123"])
    assert_usage_error(code, out, err, "the upstream (api.anthropic.com) gets no API key, which it needs",
                       "give --api-key-env ANTHROPIC_API_KEY")
    assert run_main(["--passthrough", "--auth-key", "a-long-client-key-0123", "--upstream",
                     "https://gateway.corp.example/anthropic"])[0] == 0
    lines = [line for line in _start_warnings(served[-1], {}) if "gets no API key" in line]
    assert lines == ["the upstream (gateway.corp.example) gets no API key: expect 401s (the client's key is not "
                     "passed on where the proxy has a client key of its own: run's, --auth-key); give --api-key-env "
                     "the variable that holds its key"], lines


def _start_warnings(config: Any, environ: Dict[str, str]) -> List[str]:
    server = claudeproxy.start(config, port=0)
    try:
        return cli.start_warnings(server.server, environ)
    finally:
        server.shutdown(grace=0.1)


@pytest.mark.parametrize("flags, told", [
    (("--model-map", "opus=gpt-5"), "no route names a model for Claude Code's sonnet or haiku models (such as "
     "claude-sonnet-5-5): they go upstream under their Claude names, which an OpenAI-compatible server answers "
     "with a 404 unless it knows them; give --sonnet-model or a route for them"),
    (("--model-map", "opus=gpt-5", "--model-map", "claude-sonnet*=x", "--model-map", "haiku=y"), None),
    (("--opus-model", "gpt-5"), None),  # the others borrow it
    (("--model", "gpt-5"), None),
    ((), None),  # no family routed: a proxy passing every name on, which may be meant
    (("--passthrough", "--model-map", "opus=x"), None),  # Anthropic's API knows Claude's names
])
def test_families_left_to_pass_their_claude_names_are_said_at_start(flags: Tuple[str, ...], told: Optional[str],
                                                                      capsys: Any) -> None:
    """--model-map for one family and nothing for the others sent Claude Code's background calls
    (haiku) upstream as claude-haiku-5-5: a 404 from an OpenAI-compatible server, with nothing said."""
    upstream = "http://127.0.0.1:9" if "--passthrough" in flags else "http://127.0.0.1:9/v1"
    config = cli.config_from_args(cli.build_parser().parse_args(["--upstream", upstream, "--api-key", "k",
                                                                 *flags]), {})
    lines = [line for line in _start_warnings(config, {}) if "no route" in line]
    assert lines == ([told] if told else []), lines


@pytest.mark.parametrize("matches, told", [
    (("*opus*", "*sonnet*"), "no route serves Claude Code's haiku models (such as claude-haiku-5-5): their requests "
                             "get a 404; add a route for them, or one matching '*'"),
    (("*sonnet*",), "no route serves Claude Code's opus or haiku models (such as claude-opus-5-5): their requests "
                    "get a 404; add a route for them, or one matching '*'"),
    (("*opus*", "*haiku*"), "no route serves Claude Code's sonnet models (such as claude-sonnet-5-5): their requests "
                            "get a 404; add a route for them, or one matching '*'"),
    # Fable and Mythos (Claude Code 2.1.331's /model offers Fable) take Opus's route: nothing to say.
    (("*opus*", "*sonnet*", "*haiku*"), None),
    # The names Claude Code 2.1.331 sends, or the generation before's: each serves its family.
    (("claude-opus-5-5", "claude-sonnet-5-5", "*haiku*"), None),
    (("claude-opus-4-5", "claude-sonnet-4-5", "*haiku*"), None),
    (("*sonnet*", "*"), None),
    (("gpt-*",), None),  # no Claude model at all: a proxy for another client
])
def test_a_claude_code_family_no_route_serves_is_said_at_start(matches: Tuple[str, ...], told: Optional[str]) -> None:
    # Claude Code's background calls (titles, summaries) use its haiku model: a file routing opus and
    # sonnet only gave them 404s, with nothing said at start.
    provider = Provider("local", "http://127.0.0.1:9/v1")
    config = claudeproxy.Config(providers=(provider,), routes=tuple(Route(m, RouteTarget("local", "m")) for m in matches))
    lines = [line for line in _start_warnings(config, {}) if "no route serves" in line]
    assert lines == ([told] if told else []), lines


@pytest.mark.parametrize("env, used, warned", [
    ({"GEMINI_API_KEY": "sk-gemini-1234567"}, "GEMINI_API_KEY", False),
    ({"GOOGLE_API_KEY": "sk-google-1234567"}, "GOOGLE_API_KEY", False),
    # Both set: google-genai's order, GOOGLE_API_KEY first, and a word at start when they differ.
    ({"GOOGLE_API_KEY": "sk-google-1234567", "GEMINI_API_KEY": "sk-gemini-1234567"}, "GOOGLE_API_KEY", True),
    ({"GOOGLE_API_KEY": "sk-same-12345678", "GEMINI_API_KEY": "sk-same-12345678"}, "GOOGLE_API_KEY", False),
    ({"GOOGLE_API_KEY": " ", "GEMINI_API_KEY": "sk-gemini-1234567"}, "GEMINI_API_KEY", False),  # blank: unset
])
def test_gemini_reads_google_api_key_before_gemini_api_key(served: List[Any], env: Dict[str, str], used: str,
                                                          warned: bool) -> None:
    assert run_main(["--upstream", GEMINI_URL], env)[0] == 0
    config = served[0]
    assert config.token() == env[used].strip() and config.key_source == f"${used}"
    lines = [line for line in _start_warnings(config, env) if "hold different keys" in line]
    if warned:
        assert lines == ["$GOOGLE_API_KEY and $GEMINI_API_KEY hold different keys: the upstream gets "
                         "$GOOGLE_API_KEY's, as the provider's own SDK would (unset one, or choose with "
                         "--api-key-env)"], lines
        assert all(value not in lines[0] for value in env.values())  # the names, never the keys
    else:
        assert lines == []


def test_a_chosen_gemini_key_variable_is_not_second_guessed(served: List[Any]) -> None:
    env = {"GOOGLE_API_KEY": "sk-google-1234567", "GEMINI_API_KEY": "sk-gemini-1234567"}
    assert run_main(["--upstream", GEMINI_URL, "--api-key-env", "GEMINI_API_KEY"], env)[0] == 0
    assert served[0].token() == "sk-gemini-1234567"
    assert [line for line in _start_warnings(served[0], env) if "hold different keys" in line] == []


@pytest.mark.parametrize("how", ["flag", "file"])
def test_a_gemini_key_variable_chosen_by_name_is_not_second_guessed(served: List[Any], tmp_path: Any,
                                                                     how: str) -> None:
    """--api-key-env GOOGLE_API_KEY (or the config file's api_key_env) names the variable the
    default would pick too: the user chose it, and no warning says that GEMINI_API_KEY differs."""
    env = {"GOOGLE_API_KEY": "sk-google-1234567", "GEMINI_API_KEY": "sk-gemini-1234567"}
    if how == "flag":
        argv = ["--upstream", GEMINI_URL, "--api-key-env", "GOOGLE_API_KEY"]
    else:
        path = tmp_path / "config.json"
        path.write_text(json.dumps({"upstream": GEMINI_URL, "api_key_env": "GOOGLE_API_KEY"}))
        argv = ["--config", str(path)]
    assert run_main(argv, env)[0] == 0
    assert served[0].token() == "sk-google-1234567", served[0].key_source
    assert [line for line in _start_warnings(served[0], env) if "hold different keys" in line] == []


def test_a_config_file_provider_named_upstream_is_not_second_guessed(served: List[Any], tmp_path: Any) -> None:
    """A provider of the config file may be named ``upstream``, like the shorthand's, and take
    $GOOGLE_API_KEY by name: the user chose that variable, and no warning second-guesses it."""
    env = {"GOOGLE_API_KEY": "sk-google-1234567", "GEMINI_API_KEY": "sk-gemini-1234567"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"providers": {"upstream": {"url": GEMINI_URL, "api_key_env": "GOOGLE_API_KEY"}},
                                "routes": [{"match": "*", "provider": "upstream"}]}))
    assert run_main(["--config", str(path)], env)[0] == 0
    assert served[0].providers[0].token() == "sk-google-1234567"
    assert [line for line in _start_warnings(served[0], env) if "hold different keys" in line] == []


def test_a_keyless_gemini_upstream_is_told_both_variables(served: List[Any]) -> None:
    assert_usage_error(*run_main(["--upstream", GEMINI_URL]), "set GOOGLE_API_KEY or GEMINI_API_KEY,")


def test_every_default_key_variable_is_masked() -> None:
    from claudeproxy.dialects import key_variables

    assert {"GOOGLE_API_KEY", "GEMINI_API_KEY", "GROQ_API_KEY", "OPENAI_API_KEY"} <= set(key_variables())


def test_a_route_claude_code_can_never_reach_is_warned_about_at_start(served: List[Any], caplog: Any) -> None:
    argv = ["--upstream", "http://127.0.0.1:9/v1", "--model", "small", "--model-map", "claude-sonet*=big",
            "--model-map", "Opus=huge", "--model-map", "gpt-4o=other"]
    assert run_main(argv, {})[0] == 0
    server = claudeproxy.start(served[0], port=0)
    try:
        with caplog.at_level("WARNING", logger="claudeproxy"):
            cli._warn_about(server.server, {})  # noqa: SLF001  # what serve and run log at start
        assert cli.start_warnings(server.server, {}) == [  # what run prints on the terminal too
            "--model-map claude-sonet*=big: pattern 'claude-sonet*' matches none of the model names Claude Code "
            "sends (lower case, like claude-sonnet-4-5-20250929): did you mean 'claude-sonnet*'?"]
        routed = server.server.proxy.router.resolve("claude-opus-4-1")  # "Opus" is the family
        assert routed is not None and routed.target.model == "huge"
    finally:
        server.shutdown(grace=0.1)
    assert [r.getMessage() for r in caplog.records if "matches none" in r.getMessage()] == \
        cli.start_warnings(server.server, {})


def test_a_file_route_a_model_flag_shadows_is_warned_about_at_start(served: List[Any], tmp_path: Any) -> None:
    """--sonnet-model wins over the file's Sonnet routes, as flags win over the file; a more specific
    route of the file below it is then dead, and the start says so (a route of the same source
    behind another stops the start instead)."""
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"providers": {"p": {"url": "http://127.0.0.1:9/v1"}},
                                "routes": [{"match": "claude-sonnet-4-5*", "provider": "p", "model": "file-sonnet"},
                                           {"match": "claude-haiku*", "provider": "p", "model": "file-haiku"},
                                           {"match": "*", "provider": "p", "model": "file-default"}]}))
    assert run_main(["--config", str(path), "--sonnet-model", "flag-sonnet"], {})[0] == 0
    server = claudeproxy.start(served[0], port=0)
    try:
        assert cli.shadowed_routes(server.server) == [
            f"--config {path}: routes[0] ('claude-sonnet-4-5*') is never used while --sonnet-model ('sonnet') "
            "is given: the flag takes every name the route would"]
        routed = server.server.proxy.router.resolve("claude-sonnet-4-5-20250929")
        assert routed is not None and routed.target.model == "flag-sonnet"
    finally:
        server.shutdown(grace=0.1)
    assert run_main(["--config", str(path), "--opus-model", "flag-opus"], {})[0] == 0  # nothing of the file's
    server = claudeproxy.start(served[-1], port=0)
    try:
        assert cli.shadowed_routes(server.server) == []
    finally:
        server.shutdown(grace=0.1)


def test_a_provider_no_route_names_is_said_at_start(served: List[Any], tmp_path: Any) -> None:
    """--upstream beside a config file whose '*' route takes every model got no request, and a file
    provider that no route or fallback names is never called: both were silent."""
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"providers": {"p": {"url": "http://127.0.0.1:9/v1"},
                                              "spare": {"url": "http://127.0.0.1:10/v1"},
                                              "backup": {"url": "http://127.0.0.1:11/v1"}},
                                "routes": [{"match": "*", "provider": "p", "model": "m",
                                            "fallbacks": [{"provider": "backup", "model": "b"}]}]}))
    argvs = (["--config", str(path), "--upstream", "http://127.0.0.1:12/v1", "--api-key", "k"],
             ["--config", str(path), "--upstream", "http://127.0.0.1:12/v1", "--api-key", "k", "--model", "x"])
    for argv in argvs:
        assert run_main(argv, {})[0] == 0
    told = []
    for config in served:
        server = claudeproxy.start(config, port=0)
        try:
            told.append(cli.unused_providers(server.server))
        finally:
            server.shutdown(grace=0.1)
    assert told == [
        ["providers.spare: no route or fallback names it, so it is never called",
         "--upstream: no route goes to it, as the config file's routes take every model (its '*' route): give a "
         "model flag (--model) to send requests there, or leave it out"],
        # --model replaces the file's '*' route and goes to --upstream: the route's provider and fallback
        # serve nothing then.
        ["providers.p: no route or fallback names it, so it is never called",
         "providers.spare: no route or fallback names it, so it is never called",
         "providers.backup: no route or fallback names it, so it is never called"],
    ], told


def test_a_fallback_repeating_an_earlier_target_is_said_at_start() -> None:
    """Fallbacks [A, A] behind target A: one request made nine identical calls to a failing
    upstream (with --retries 2), and nothing said so (probe U 6)."""
    provider = Provider("a", "http://127.0.0.1:9/v1")
    routes = (Route("loop", RouteTarget("a", "m"), (RouteTarget("a", "m"), RouteTarget("a", "n"), RouteTarget("a", "n"))),
              Route("*", RouteTarget("a", "m"), (RouteTarget("a", "n"),)))
    server = claudeproxy.start(providers=(provider,), routes=routes, port=0)
    try:
        assert cli.repeated_targets(server.server) == [
            "routes[0] ('loop'): fallback 1 (a/m) repeats a target tried before it: the same call again, which --retries already makes",
            "routes[0] ('loop'): fallback 3 (a/n) repeats a target tried before it: the same call again, which --retries already makes"]
    finally:
        server.shutdown(grace=0.1)


def test_an_api_version_for_an_upstream_that_is_not_azure_stops_the_start(served: List[Any], tmp_path: Any) -> None:
    """Azure behind a domain of its own without --provider azure got OpenAI's paths and auth, and the
    api-version went nowhere, without a word (probe Z, D4)."""
    code, out, err = run_main(["--azure-api-version", "2025-01-01", "--upstream", "http://127.0.0.1:9/v1"])
    assert_usage_error(code, out, err, "--azure-api-version: an api-version is for Azure OpenAI",
                       "its dialect is generic", "say so with --provider azure")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"providers": {"o": {"url": "http://127.0.0.1:9/v1", "azure_api_version": "2025-01-01"}},
                                "routes": [{"match": "*", "provider": "o", "model": "m"}]}))
    code, out, err = run_main(["--config", str(path)])
    assert_usage_error(code, out, err, "providers.o.azure_api_version: an api-version is for Azure OpenAI",
                       'providers.o.dialect "azure"')
    assert run_main(["--azure-api-version", "2025-01-01", "--upstream", "http://127.0.0.1:9/v1", "--provider", "azure",
                     "--model", "dep"], {"AZURE_OPENAI_API_KEY": "k" * 20})[0] == 0
    # Azure's versionless surface sends none: the setting went nowhere (verification).
    code, out, err = run_main(["--azure-api-version", "2025-01-01", "--upstream", "https://r.openai.azure.com/openai/v1",
                               "--model", "gpt-4.1"], {"AZURE_OPENAI_API_KEY": "k" * 20})
    assert_usage_error(code, out, err, "--azure-api-version: Azure's /openai/v1 URL takes no api-version")


def test_an_azure_url_that_names_a_deployment_takes_only_that_model(served: List[Any]) -> None:
    """The deployment in the URL answered every call, and each was recorded and priced as the route's
    model (an Opus route's o3-prod for what gpt-4o-mini answered: probe Z, D7)."""
    env = {"AZURE_OPENAI_API_KEY": "k" * 20}
    url = "https://r.openai.azure.com/openai/deployments/gpt-4o-mini"
    code, out, err = run_main(["--provider", "azure", "--upstream", url, "--model", "gpt-4o-mini",
                               "--opus-model", "o3-prod"], env)
    assert_usage_error(code, out, err, "--opus-model: the URL of provider upstream names the Azure deployment "
                       "'gpt-4o-mini', which answers every call sent there, so 'o3-prod' would be recorded")
    code, out, err = run_main(["--provider", "azure", "--upstream", url], env)
    assert_usage_error(code, out, err, "so the client's model name would be recorded")
    assert run_main(["--provider", "azure", "--upstream", url, "--model", "gpt-4o-mini"], env)[0] == 0
    assert run_main(["--provider", "azure", "--upstream", url, "--model", "GPT-4o-mini"], env)[0] == 0  # (review AB)


def test_a_family_flag_an_earlier_route_leaves_no_name_is_said_at_start(served: List[Any]) -> None:
    """--model-map 'claude-*=a' takes every haiku name Claude Code sends: --haiku-model b did nothing,
    and the start said nothing (probe Z, D2)."""
    assert run_main(["--upstream", "http://127.0.0.1:9/v1", "--model-map", "claude-*=a", "--haiku-model", "b"])[0] == 0
    lines = [line for line in _start_warnings(served[-1], {}) if "gets none of" in line]
    assert lines == ["--haiku-model ('haiku') gets none of Claude Code's haiku names: claude-haiku-5-5 goes to "
                     "--model-map claude-*=a ('claude-*'), tried before it"], lines
    assert run_main(["--upstream", "http://127.0.0.1:9/v1", "--model-map", "claude-sonnet-*=a", "--haiku-model", "b"])[0] == 0
    assert not [line for line in _start_warnings(served[-1], {}) if "gets none of" in line]


def test_a_clients_key_that_would_go_to_two_hosts_is_said_at_start() -> None:
    """Two Messages API providers without keys on one route: each gets the client's own key, so an
    Anthropic login went to the fallback's host when Anthropic failed, and nothing said so (probe AA F-2)."""
    anthropic = Provider("anth", "https://api.anthropic.com", api="messages")
    other = Provider("third", "https://gateway.corp.example/anthropic", api="messages")
    keyed = Provider("keyed", "https://api.deepseek.com/anthropic", api="messages",
                     token=claudeproxy.static_token("sk-0000000000000000"))
    said = ["providers anth (api.anthropic.com) and third (gateway.corp.example) have no key of their own and each "
            "gets the client's: the key a client sends for one goes to the others too (give them keys of their "
            "own if that is not meant)"]
    by_fallback = (Route("opus", RouteTarget("anth", "claude-opus-4-5"), (RouteTarget("third", "x"),)),
                   Route("*", RouteTarget("anth"), (RouteTarget("keyed", "deepseek-chat"),)))
    by_route = (Route("claude-opus*", RouteTarget("anth")), Route("*", RouteTarget("third", "x")))  # (verification)
    for routes in (by_fallback, by_route):
        server = claudeproxy.start(providers=(anthropic, other, keyed), routes=routes, port=0)
        try:
            assert cli.shared_client_keys(server.server.proxy.router) == said
            assert cli.shared_client_keys(server.server.proxy.router, forwarded=False) == []  # run's, --auth-key
        finally:
            server.shutdown(grace=0.1)
    ports = (Provider("a", "http://127.0.0.1:9301", api="messages"), Provider("b", "http://127.0.0.1:9302", api="messages"))
    server = claudeproxy.start(providers=ports, routes=(Route("*", RouteTarget("a"), (RouteTarget("b"),)),), port=0)
    try:
        assert len(cli.shared_client_keys(server.server.proxy.router)) == 1  # two servers on one host
    finally:
        server.shutdown(grace=0.1)


@pytest.mark.parametrize("provider, url", [
    ("deepseek", "https://api.deepseek.com"),
    ("gemini", "https://generativelanguage.googleapis.com/v1beta/openai"),
    ("openrouter", "https://openrouter.ai/api/v1"),
    ("ollama", "http://localhost:11434/v1"),
])
def test_a_provider_without_upstream_goes_to_that_providers_url(served: List[Any], provider: str, url: str) -> None:
    """--provider deepseek without --upstream sent DeepSeek's key to api.openai.com, the default,
    without a word (a verification)."""
    env = {"DEEPSEEK_API_KEY": "sk-ds-0000000000000000", "GEMINI_API_KEY": "g-00000000000000000000",
           "OPENROUTER_API_KEY": "sk-or-00000000000000000", "OPENAI_API_KEY": "sk-openai-000000000000"}
    assert run_main(["--provider", provider], env)[0] == 0
    assert served[0].upstream == url
    # $OPENAI_BASE_URL is a URL given: it stands.
    assert run_main(["--provider", provider], {**env, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})[0] == 0
    assert served[-1].upstream == "http://127.0.0.1:9/v1"


@pytest.mark.parametrize("argv, told", [
    (["--provider", "azure"], "--provider azure names no URL: give --upstream (your resource's URL); without it "
                              "the requests, and the key, would go to https://api.openai.com/v1"),
    (["--provider", "openrouter", "--passthrough"],
     "--provider openrouter with --passthrough names no URL: give --upstream (the provider's Anthropic-compatible "
     "URL); without it the requests, and the key, would go to https://api.anthropic.com"),
])
def test_a_provider_whose_url_is_not_known_stops_the_start(served: List[Any], argv: List[str], told: str) -> None:
    code, _, err = run_main(argv, {"OPENROUTER_API_KEY": "sk-or-00000000000000000", "AZURE_OPENAI_API_KEY": "k" * 20})
    assert code == 2 and err.strip() == f"claudeproxy: error: {told}", err
    assert served == []  # (the fixture keeps a start that went on from serving)


def test_a_library_route_without_an_origin_is_named_by_its_place() -> None:
    server = claudeproxy.start(providers=(Provider("p", "http://127.0.0.1:9/v1"),),
                               routes=(Route("sonet", RouteTarget("p", "n")), Route("*", RouteTarget("p", "m"))),
                               port=0)
    try:
        assert [line.split(":")[0] for line in cli.unmatched_routes(server.server)] == ["routes[0]"]
    finally:
        server.shutdown(grace=0.1)


def test_empty_api_key_flag_overrides_the_environment(served: List[Any]) -> None:
    assert run_main(["--upstream", "http://127.0.0.1:9/v1", "--api-key", ""], {"OPENAI_API_KEY": ENV_KEY})[0] == 0
    assert served[0].token() == ""


@pytest.mark.parametrize("argv", [
    ["--header", "Authorization: Bearer hdr-token"],  # the key from $OPENAI_API_KEY: left as it was
    ["--api-key", "", "--header", "Authorization: Bearer hdr-token"],  # no key: the header is the credential
    ["--upstream-auth", "x-api-key", "--api-key", "sk-flag", "--header", "Authorization: Bearer hdr-token"],
    ["--api-key", "sk-flag", "--header", "x-api-key: hdr-token"],  # the key goes as Bearer: both are sent
], ids=["env-key", "no-key", "other-style", "other-header"])
def test_a_header_the_key_does_not_replace_is_accepted(served: List[Any], argv: List[str]) -> None:
    code, _, err = run_main(argv, {"OPENAI_API_KEY": ENV_KEY})
    assert code == 0, err


def test_the_users_header_is_sent_not_replaced_by_a_key_only_found_in_the_environment(
        served: List[Any], fake_upstream: Any) -> None:
    # --header 'Authorization: ...' with no key flag: the header is the credential the user gave. A key
    # exported for other tools ($OPENAI_API_KEY) went in its place, and the header was dropped unsaid.
    code, _, err = run_main(["--upstream", fake_upstream.url, "--model", "gpt-4o", "--header",
                             "Authorization: Bearer hdr-token"], {"OPENAI_API_KEY": ENV_KEY})
    assert code == 0, err
    server = claudeproxy.start(served[-1], port=0)
    try:
        fake_upstream.push(json_reply(completion("ok")))
        resp = request(server.url, "POST", "/v1/messages", minimal_request(), {})
        assert resp.status == 200, resp
    finally:
        server.shutdown(grace=0.1)
    assert [v for k, v in fake_upstream.last.raw_headers if k.lower() == "authorization"] == ["Bearer hdr-token"]


def test_a_header_a_key_variable_replaces_is_refused_and_not_echoed(served: List[Any]) -> None:
    code, out, err = run_main(["--api-key-env", "MY_KEY", "--header", "authorization: Bearer hdr-token"],
                              {"MY_KEY": ENV_KEY})
    assert_usage_error(code, out, err, "--header 'authorization: ...' and --api-key-env", "give one of them")
    assert "hdr-token" not in err and ENV_KEY not in err
    assert served == []


@pytest.mark.parametrize("value, told", [
    ("sk-proj-abcdefghijklmnop1234", "--api-key-env: takes the name of the environment variable that holds the "
                                     "key, not the key itself"),
    ("aBcD1234EfGh5678IjKl9012MnOp3456", "--api-key-env: takes the name of the environment variable that holds "
                                         "the key, not the key itself"),  # a Mistral key: a valid name's letters
    ("$OPENAI_API_KEY", "--api-key-env: give the variable's name without the $ (OPENAI_API_KEY), not $OPENAI_API_KEY"),
    ("MY_UNSET_KEY", "--api-key-env: the environment variable MY_UNSET_KEY is not set"),
])
def test_a_key_or_a_dollar_where_a_variable_name_belongs_is_told_so(served: List[Any], value: str, told: str) -> None:
    # "the environment variable *** is not set" sent a user who pasted the key itself looking for a variable.
    code, out, err = run_main(["--api-key-env", value], {"OPENAI_API_KEY": ENV_KEY})
    assert_usage_error(code, out, err, told)
    assert "abcdefghijklmnop" not in err and "1234EfGh" not in err  # a key pasted there is not echoed


def test_auth_key_from_environment_allows_a_wildcard_host(served: List[Any]) -> None:
    key = "local-key-0123456"
    assert run_main(["--host", "0.0.0.0"], {"CLAUDEPROXY_AUTH_KEY": key, "OPENAI_API_KEY": ENV_KEY})[0] == 0
    assert served[0].auth_key == key


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10"])
def test_a_short_client_key_beyond_loopback_exits_2(served: List[Any], host: str) -> None:
    # Anyone on the network may try keys there: "secret" would fall to a word list.
    code, out, err = run_main(["--host", host, "--auth-key", "secret"], {"OPENAI_API_KEY": ENV_KEY})
    assert_usage_error(code, out, err, "--auth-key", "at least 16 characters, got 6", host)
    assert "secret" not in err and served == []
    assert run_main(["--auth-key", "secret"], {"OPENAI_API_KEY": ENV_KEY})[0] == 0  # on loopback any key will do


# ---------------------------------------------------------------------------
# Bad input: exit 2, one line on stderr, nothing secret echoed.


@pytest.mark.parametrize("url, part", [
    ("ftp://example.test/v1", "http"),
    ("example.test/v1", "http"),
    ("http://", "host"),
    ("http://user:hunter2@example.test/v1", "credentials"),
    ("https://example.test/v1#frag", "fragment"),
    ("http://example.test:99999/v1", "--upstream"),
    ("http://[::1/v1", "--upstream"),
    # Every call would be a 502: no upstream listens on port 0, and no resolver takes these names.
    ("http://127.0.0.1:0/v1", "port 0"),
    ("http://-bad-/v1", "'-bad-' is not an IP address or a host name"),
    ("http://a..b/v1", "not an IP address or a host name"),
    ("http://999.1.1.1/v1", "not an IP address or a host name"),
    ("http://\u00fc.example/v1", "xn--"),
])
def test_bad_upstream_url_exits_2(served: List[Any], url: str, part: str) -> None:
    code, out, err = run_main(["--upstream", url])
    assert_usage_error(code, out, err, "--upstream", part)
    assert "hunter2" not in err
    assert served == []


def test_bad_upstream_from_environment_exits_2_naming_the_variable(served: List[Any]) -> None:
    """The user never typed --upstream: the message names the variable that was read."""
    code, out, err = run_main([], {"OPENAI_BASE_URL": "not a url"})
    assert_usage_error(code, out, err, "OPENAI_BASE_URL", "URL")
    assert "--upstream" not in err


def test_a_blank_upstream_from_the_environment_is_shown_as_given(served: List[Any]) -> None:
    code, out, err = run_main([], {"OPENAI_BASE_URL": "  "})
    assert_usage_error(code, out, err, "OPENAI_BASE_URL: the value is only blanks; expected an http:// or https:// URL")


def test_a_bad_client_key_from_the_environment_names_the_variable_not_the_key(served: List[Any]) -> None:
    code, out, err = run_main([], {"CLAUDEPROXY_AUTH_KEY": "sk-client-\x01-secret"})
    assert_usage_error(code, out, err, "CLAUDEPROXY_AUTH_KEY", "control character")
    assert "--auth-key" not in err and "secret" not in err


def test_bad_proxy_url_exits_2(served: List[Any]) -> None:
    assert_usage_error(*run_main(["--proxy", "socks5://127.0.0.1:1080"]), "--proxy")


@pytest.mark.parametrize("header", [
    "X-A: a\r\nX-Evil: 1",  # CRLF: a second header (response splitting upstream)
    "X-A: a\r\n folded",  # obs-fold: accepted by http.client (S6)
    "X-A: a\x00b",  # NUL: accepted by http.client (S6)
    "X-A: a\nb",
    "X-A: a\rb",
    "Host: evil.example",
    "Content-Length: 5",
    "Transfer-Encoding: chunked",
    "Connection: close",
    "no colon here",
    "Bad Name: v",
    ": empty name",
], ids=["crlf", "obs-fold", "nul", "lf", "cr", "host", "content-length", "transfer-encoding", "connection",
        "no-colon", "space-in-name", "empty-name"])
def test_bad_header_exits_2(served: List[Any], header: str) -> None:
    code, out, err = run_main(["--header", header])
    assert_usage_error(code, out, err, "--header")
    assert served == []


def test_a_header_given_twice_exits_2_naming_it(served: List[Any], tmp_path: Any) -> None:
    """Only the last of two went upstream, without a word (a probe)."""
    code, out, err = run_main(["--header", "X-Title: one", "--header", "x-title: two"])
    assert (code, out, err) == (2, "", "claudeproxy: error: --header: x-title is given twice (as X-Title too): "
                                       "give it once\n")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"providers": {"p": {"url": "http://127.0.0.1:9/v1",
                                                    "headers": {"X-Title": "a", "x-title": "b"}}},
                                "routes": [{"match": "*", "provider": "p", "model": "m"}]}))
    code, out, err = run_main(["--config", str(path)])
    assert_usage_error(code, out, err, "providers.p.headers: x-title is given twice")
    assert served == []


def test_a_header_without_colon_is_not_echoed(served: List[Any]) -> None:
    """A forgotten colon leaves the credential in the value: the message says what is wrong only."""
    code, out, err = run_main(["--header", "X-Token sk-HEADER-SECRET-123"])
    assert_usage_error(code, out, err, "--header")
    assert "HEADER-SECRET" not in out + err


@pytest.mark.parametrize("port", ["70000", "-1", "abc", "65536"])
def test_bad_port_exits_2(served: List[Any], port: str) -> None:
    assert_usage_error(*run_main(["--port", port]), "--port")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.test"])
def test_non_loopback_host_without_auth_key_exits_2(served: List[Any], host: str) -> None:
    assert_usage_error(*run_main(["--host", host]), host, "--auth-key")
    assert served == []


@pytest.mark.parametrize("host", ["127.0.0.1 ", " ::1", "not a host", "999.1.1.1", "\u00fc", "-bad-", "a..b",
                                  "[example.test]", "x" * 64 + ".test"])
@pytest.mark.parametrize("auth", [[], ["--auth-key", "client-key-0123456789"]], ids=["no-auth-key", "auth-key"])
def test_a_host_that_is_no_address_nor_name_exits_2_naming_host(served: List[Any], host: str,
                                                                auth: List[str]) -> None:
    """Not "without --auth-key" (the trailing blank hid), nor a bind that failed with exit 1."""
    code, out, err = run_main([f"--host={host}", *auth])
    assert_usage_error(code, out, err, "--host: expected an IP address or a host name", repr(host))
    assert served == []


@pytest.mark.parametrize("host", ["example.test", "box.lan.", "compose_service", "[::]", "10.0.0.1"])
def test_any_address_or_host_name_may_be_listened_on_with_an_auth_key(served: List[Any], host: str) -> None:
    """Nothing is resolved at the check: a name that does not resolve is found by the bind (exit 2)."""
    assert run_main(["--host", host, "--auth-key", "client-key-0123456789"], {"OPENAI_API_KEY": ENV_KEY})[0] == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST", "::1", "127.0.0.2"])
def test_loopback_hosts_need_no_auth_key(served: List[Any], host: str) -> None:
    assert run_main(["--host", host], {"OPENAI_API_KEY": ENV_KEY})[0] == 0


def test_an_api_version_in_the_url_and_another_in_the_flag_stop_the_start(served: List[Any]) -> None:
    """The URL's went and the flag's was dropped without a word (probe M); the same one twice, or the
    flag left at its default, is no contradiction."""
    url = "https://r.openai.azure.com?api-version=2024-06-01"
    code, out, err = run_main(["--provider", "azure", "--upstream", url, "--azure-api-version", "2025-04-01-preview"],
                              {"AZURE_OPENAI_API_KEY": ENV_KEY})
    assert code == 2 and "--azure-api-version: '2025-04-01-preview' contradicts the api-version=2024-06-01" in err, err
    for more in (["--azure-api-version", "2024-06-01"], []):
        assert run_main(["--provider", "azure", "--upstream", url, *more], {"AZURE_OPENAI_API_KEY": ENV_KEY})[0] == 0


@pytest.mark.parametrize("argv, part", [
    (["--log-level", "loud"], "--log-level"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--connect-timeout", "0"], "--connect-timeout"),
    (["--max-concurrency", "0"], "--max-concurrency"),
    (["--model-map", "no-equals"], "--model-map"),
    (["--provider", "nope"], "--provider"),
    (["--upstrem", "http://127.0.0.1:9/v1"], "unrecognized arguments: --upstrem http://127.0.0.1:9/v1 (did you mean --upstream?)"),
    (["--prot=3"], "(did you mean --port?)"),
])
def test_other_bad_flags_exit_2(served: List[Any], argv: List[str], part: str) -> None:
    assert_usage_error(*run_main(argv), part)


def test_usage_error_does_not_echo_the_api_key(served: List[Any]) -> None:
    code, out, err = run_main(["--header", f"Authorization: Bearer {ENV_KEY}\r\nX: 1"], {"OPENAI_API_KEY": ENV_KEY})
    assert_usage_error(code, out, err)
    assert ENV_KEY not in err


def test_port_in_use_exits_2_with_one_line_naming_host_and_port() -> None:
    """A bad setting (the README: exit 2), found by the bind rather than before it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, out, err = run_main(["--port", str(port), "--upstream", "http://127.0.0.1:9/v1"])
    assert_usage_error(code, out, err, f"cannot listen on 127.0.0.1:{port} (--host, --port)")
    # main() leaves logging as it found it (tests and embedding programs share the logger).
    logger = logging.getLogger("claudeproxy")
    # (A library start() in this process gives it a NullHandler, which main() does not set up.)
    assert [h for h in logger.handlers if not isinstance(h, logging.NullHandler)] == [] and logger.propagate


# ---------------------------------------------------------------------------
# --help and --version.

ISSUE_FLAGS = ["--upstream", "--api-key", "--host", "--port", "--model", "--header", "--proxy", "--log-level",
               "--version", "--help", "--auth-key", "--allowed-host", "--allowed-origin", "--max-concurrency",
               "--shutdown-grace"]


def test_help_lists_every_flag() -> None:
    code, out, err = run_main(["--help"])
    assert code == 0 and err == ""
    flags = set(re.findall(r"--[a-z][a-z-]+", out))
    assert set(ISSUE_FLAGS) <= flags, set(ISSUE_FLAGS) - flags
    # Every option the parser knows is documented in the help text.
    known = {s for a in cli.build_parser()._actions for s in a.option_strings if s.startswith("--")}
    assert known <= flags, known - flags
    assert "OPENAI_BASE_URL" in out and "OPENAI_API_KEY" in out
    # The usage lines name both ways to start it: the proxy alone, and run with a command after it.
    assert out.startswith("usage: claudeproxy [OPTIONS]\n       claudeproxy run [OPTIONS] -- COMMAND"), out[:200]


def test_version() -> None:
    code, out, err = run_main(["--version"])
    assert (code, out, err) == (0, f"claudeproxy {claudeproxy.__version__}\n", "")
    assert re.match(r"^\d+\.\d+\.\d+", claudeproxy.__version__)


# ---------------------------------------------------------------------------
# A real process.

LISTEN_RE = re.compile(r"^claudeproxy listening on http://127\.0\.0\.1:(\d+) -> (\S+)\n$")


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CLAUDEPROXY_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["PYTHONPATH"] = ROOT
    env["OPENAI_API_KEY"] = UPSTREAM_KEY
    return env


def _readline(stream: Any, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "the proxy printed nothing in time"
    return str(stream.readline())


@pytest.fixture
def spawn(fake_upstream: Any, tmp_path: Any) -> Iterator[Any]:
    procs: List[subprocess.Popen] = []

    def start(*extra: str) -> Tuple[subprocess.Popen, int]:
        argv = [sys.executable, "-m", "claudeproxy", "--port", "0", "--upstream", fake_upstream.url,
                "--log-level", "debug", "--log-bodies", *extra]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
        procs.append(proc)
        first = _readline(proc.stdout, 10)
        match = LISTEN_RE.match(first)
        assert match, first
        assert match.group(2) == fake_upstream.url
        return proc, int(match.group(1))

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def _stop(proc: subprocess.Popen, sig: int, within: float) -> Tuple[str, str]:
    started = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=within + 5)
    assert time.monotonic() - started < within, f"took {time.monotonic() - started:.1f} s"
    assert proc.returncode == 0, err
    return out, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_real_process_serves_and_stops_cleanly(spawn: Any, fake_upstream: Any, tmp_path: Any, sig: int) -> None:
    metrics = tmp_path / "calls.jsonl"
    proc, port = spawn("--metrics-file", str(metrics))
    resp = request(f"http://127.0.0.1:{port}", "POST", "/v1/messages?beta=true", minimal_request(),
                   {"x-api-key": "sk-ant-client-000000000"})
    assert resp.status == 200, resp
    assert fake_upstream.last.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    out, err = _stop(proc, sig, 5 + 1)
    assert UPSTREAM_KEY not in out + err
    assert "sk-ant-client-000000000" not in out + err
    assert "Traceback" not in err
    assert "upstream request body" in err  # debug logging really ran, so the key check means something
    assert "cannot connect to the upstream" not in err  # it answered
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [(r["endpoint"], r["status"]) for r in lines] == [("/v1/messages", 200)]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_an_upstream_that_refuses_is_said_once_listening(refused_port: int) -> None:
    """Claude Code retries 502s without a word: the server's log says it at the start instead,
    after the listening line (the probe must not delay it), without the key."""
    upstream = f"http://127.0.0.1:{refused_port}/v1"
    argv = [sys.executable, "-m", "claudeproxy", "--port", "0", "--upstream", upstream, "--api-key", UPSTREAM_KEY]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
    try:
        assert LISTEN_RE.match(_readline(proc.stdout, 10))
        lines = [_readline(proc.stderr, 10)]
        while "WARNING" not in lines[-1] and len(lines) < 5:
            lines.append(_readline(proc.stderr, 10))
        line = lines[-1]
        assert line.rstrip().endswith(f"WARNING claudeproxy: cannot connect to the upstream {upstream} "
                                      "(Connection refused): requests to it will fail"), lines
    finally:
        out, err = _stop(proc, signal.SIGTERM, 5 + 1)
    assert UPSTREAM_KEY not in line + out + err


@pytest.mark.parametrize("settings, warned", [
    ({"upstream": "https://8.8.8.8/v1"}, True),
    ({"upstream": "https://api.openai.com/v1", "token": claudeproxy.static_token(UPSTREAM_KEY)}, False),
    ({"upstream": "http://localhost:11434/v1"}, False),
    ({"upstream": "http://192.168.1.20:8000/v1"}, False),
    ({"upstream": "http://ollama:11434/v1"}, False),
    ({"upstream": "http://gpu.lan:8000/v1"}, False),
    ({"upstream": "https://api.deepseek.com/anthropic", "upstream_api": "messages"}, False),  # the client's key goes
])
def test_a_provider_on_the_internet_without_a_key_is_said_at_start(settings: Dict[str, Any], warned: bool) -> None:
    # Without a word, every request got a 401, which Claude Code reads as its own login gone.
    server = claudeproxy.start(**settings)
    try:
        lines = cli.keyless_upstreams(server.server)
    finally:
        server.shutdown(grace=0.1)
    assert bool(lines) == warned, lines
    if warned:
        assert "gets no API key" in lines[0] and "OPENAI_API_KEY" in lines[0]


def test_start_takes_a_credential_header_as_the_key(served: List[Any]) -> None:
    # Azure with an Entra ID token: the token goes in Authorization, and Azure's key header (api-key)
    # stays empty. The check for a keyless provider took that for no credential at all.
    server = claudeproxy.start(upstream="https://res.openai.azure.com", provider="azure", model="dep",
                               headers=(("Authorization", "Bearer entra-token-0001"),))
    server.shutdown(grace=0.1)
    code, _, err = run_main(["--provider", "azure", "--upstream", "https://res.openai.azure.com", "--model", "dep",
                             "--header", "Authorization: Bearer entra-token-0001"], {})
    assert code == 0, err
    assert served[-1].headers == (("Authorization", "Bearer entra-token-0001"),)


@pytest.mark.parametrize("settings, told", [
    ({}, "the upstream (api.openai.com) gets no API key, which it needs (give start() token=claudeproxy.static_token(key))"),
    ({"upstream": "https://api.groq.com/openai/v1", "token": claudeproxy.static_token("")},
     "the upstream (api.groq.com) gets no API key, which it needs (give start() token=claudeproxy.static_token(key))"),
    ({"providers": (Provider("ds", "https://api.deepseek.com/v1"),), "routes": (Route("*", RouteTarget("ds", "m")),)},
     "provider ds (api.deepseek.com) gets no API key, which it needs (give its Provider a token)"),
])
def test_start_refuses_a_provider_known_to_need_a_key_that_gets_none(settings: Dict[str, Any], told: str) -> None:
    # As the command line does: a library server whose every answer would be a 401 does not start,
    # and the line says what start() takes, not a flag or a variable it never reads.
    with pytest.raises(ValueError) as refused:
        claudeproxy.start(**settings)
    assert str(refused.value) == told


def test_a_keyless_provider_of_a_config_file_is_told_where_its_key_goes() -> None:
    provider = Provider("deepseek", "https://api.deepseek.com/v1")
    config = claudeproxy.Config(providers=(provider,), routes=(Route("*", RouteTarget("deepseek", "deepseek-chat")),))
    with pytest.raises(ValueError) as refused:
        cli.check_keys(config)  # what serve and run do before anything listens
    line = str(refused.value)
    assert line == ("provider deepseek (api.deepseek.com) gets no API key, which it needs "
                    "(give it api_key_env or api_key_command in the config file)"), line
    assert "OPENAI_API_KEY" not in line  # not the variable of the single-upstream flags


def test_a_keyless_provider_read_from_a_config_file_is_checked_like_the_flags(served: List[Any], tmp_path: Any) -> None:
    """The file's reader gave a keyless provider a token source the checks could not read: the
    start went on without a word, and every request got a 401 (a probe)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"providers": {"oa": {"url": "https://api.openai.com/v1"},
                                              "gw": {"url": "https://gateway.corp.example/v1"}},
                                "routes": [{"match": "opus", "provider": "gw", "model": "x"},
                                           {"match": "*", "provider": "oa", "model": "gpt-4.1"}]}))
    code, out, err = run_main(["--config", str(path)], {})
    assert (code, out) == (2, ""), err
    assert err == ("claudeproxy: error: provider oa (api.openai.com) gets no API key, which it needs "
                   "(give it api_key_env or api_key_command in the config file)\n"), err
    path.write_text(json.dumps({"providers": {"gw": {"url": "https://gateway.corp.example/v1"}},
                                "routes": [{"match": "*", "provider": "gw", "model": "x"}]}))
    assert run_main(["--config", str(path)], {})[0] == 0  # a host not known to need one: a warning
    assert [line for line in _start_warnings(served[-1], {}) if "gets no API key" in line] == [
        "provider gw (gateway.corp.example) gets no API key: expect 401s "
        "(give it api_key_env or api_key_command in the config file)"]


def test_the_stop_signal_handler_only_marks_the_stop() -> None:
    # It runs in the main thread between two bytecodes, maybe inside a lock the main thread holds:
    # one that set a threading.Event deadlocked inside that event's wait (SIGTERM ignored, CI on 3.8).
    stopping: List[int] = []
    previous = cli._install_signals(stopping)  # noqa: SLF001
    try:
        handler = signal.getsignal(signal.SIGTERM)
        with threading.Lock():  # as if the main thread held a lock of its own when the signal came
            handler(signal.SIGTERM, None)  # type: ignore[operator]
        assert stopping == [signal.SIGTERM]
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def test_usage_log_and_json_log_format(spawn: Any, fake_upstream: Any, tmp_path: Any) -> None:
    usage = tmp_path / "usage.jsonl"
    proc, port = spawn("--usage-log", str(usage), "--log-format", "json", "--model", "gpt-4o")
    url = f"http://127.0.0.1:{port}"
    assert request(url, "POST", "/v1/messages", minimal_request()).status == 200
    assert request(url, "POST", "/v1/messages", b"{oops").status == 400
    assert request(url, "POST", "/v1/messages/count_tokens", minimal_request()).status == 200
    out, err = _stop(proc, signal.SIGTERM, 5 + 1)
    lines = [json.loads(line) for line in err.splitlines()]  # every stderr line is one JSON object
    # Recorded as each answer is written, so quick calls may be logged out of order: sort by start.
    calls = sorted((line["call"] for line in lines if "call" in line), key=lambda c: c["time"])
    assert [(c["endpoint"], c["status"]) for c in calls] == [
        ("/v1/messages", 200), ("/v1/messages", 400), ("/v1/messages/count_tokens", 200)]
    assert any(line["message"].startswith("upstream request body") for line in lines)  # debug bodies
    assert UPSTREAM_KEY not in err
    records = sorted((json.loads(line) for line in usage.read_text().splitlines()), key=lambda c: c["time"])
    assert records == calls  # the usage log holds the same records
    # gpt-4o's built-in prices: 10 input and 5 output tokens from the fake's usage.
    assert records[0]["cost_usd"] == pytest.approx((10 * 2.5 + 5 * 10.0) / 1e6)
    assert records[1]["error_type"] == "invalid_request_error" and records[2]["local"] is True
    assert usage.stat().st_mode & 0o077 == 0  # made for its owner alone (probe E), whatever the umask


def test_sigterm_with_a_stream_in_flight(spawn: Any, fake_upstream: Any) -> None:
    # F24: the stream in flight ends with an overloaded_error event within the grace, exit 0 by grace + 1 s.
    gate = Gate()
    reply = sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), done=False)
    reply.body.append(gate)
    fake_upstream.push(reply)
    proc, port = spawn("--shutdown-grace", "1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        body = json.dumps(minimal_request(stream=True)).encode()
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert gate.reached.wait(10)
        received = _read_until(sock, b"Hel", 5)
        out, err = _stop(proc, signal.SIGTERM, 1 + 1)
        received += _read_to_eof(sock, 5)
    gate.release()
    payload = received.split(b"\r\n\r\n", 1)[1]
    events = events_of(dechunk(payload))
    assert_valid_event_sequence(events)
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "overloaded_error", events[-1]
    assert "Traceback" not in err


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


def _arena_reserves(pid: int) -> int:
    """glibc's malloc arenas besides the main one: each reserves 64 MiB, most of it PROT_NONE."""
    with open(f"/proc/{pid}/maps", encoding="ascii") as fh:
        spans = [line.split()[:2] for line in fh]
    return sum(1 for span, perms in spans if perms == "---p"
               and int(span.split("-")[1], 16) - int(span.split("-")[0], 16) >= 16 << 20)


@pytest.mark.skipif(not _glibc(), reason="glibc's malloc arenas (Linux with glibc)")
def test_the_command_line_keeps_malloc_arenas_few_with_many_streams(spawn: Any, fake_upstream: Any) -> None:
    # A thread per connection: glibc would give each of them an arena of its own (up to 8 a core),
    # each holding freed memory; python -m claudeproxy asks for two (malloc.py).
    gates = [Gate() for _ in range(6)]
    for gate in gates:
        reply = sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), done=False)
        reply.body.append(gate)
        fake_upstream.push(reply)
    proc, port = spawn()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in gates]
    try:
        body = json.dumps(minimal_request(stream=True)).encode()
        for sock in socks:
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        for sock in socks:
            _read_until(sock, b"Hel", 10)
        # Every stream held open (the fake marks its gate just after the chunk a client may already have).
        assert all(gate.reached.wait(10) for gate in gates)
        assert _arena_reserves(proc.pid) <= 1
    finally:
        for gate in gates:
            gate.release()
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("environ", [{"MALLOC_ARENA_MAX": "8"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=8"},
                                     {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=4"}])
def test_an_arena_limit_in_the_environment_is_left_to_rule(environ: Dict[str, str]) -> None:
    from claudeproxy.malloc import fewer_arenas

    assert fewer_arenas(environ) is False


def test_the_installed_command_is_the_proxys_own_process_too() -> None:
    # pip install . makes a claudeproxy command of setup.cfg's entry point: it must set up the
    # process as python -m claudeproxy does (the arenas), not call main() alone.
    import configparser

    from claudeproxy import commands

    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"), encoding="utf-8")
    line = parser["options.entry_points"]["console_scripts"].strip()
    module, _, function = line.split("=", 1)[1].strip().partition(":")
    assert (module, getattr(commands, function, None)) == ("claudeproxy.commands", commands.process_main)


_INTERRUPTED_IMPORT = """
import sys

class Interrupt:  # Ctrl-C as a module of the package loads
    def find_spec(self, name, path=None, target=None):
        if name == "claudeproxy.server":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, Interrupt())
"""


def test_ctrl_c_while_the_modules_load_stops_without_a_traceback(tmp_path: Any) -> None:
    # A new user's probe: Ctrl-C in the first tenth of a second printed a traceback.
    (tmp_path / "sitecustomize.py").write_text(_INTERRUPTED_IMPORT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])}
    done = subprocess.run([sys.executable, "-m", "claudeproxy", "--version"], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "")
    # The command pip installs (a script of its own making, named claudeproxy) and the zipapp's entry.
    script = tmp_path / "claudeproxy"
    script.write_text("import sys\nfrom claudeproxy.commands import process_main\nsys.exit(process_main())\n")
    from claudeproxy.zipapp import _MAIN

    renamed = tmp_path / "proxy_main.py"
    renamed.write_text(_MAIN.format(package="claudeproxy"))
    for program in (script, renamed):
        done = subprocess.run([sys.executable, str(program), "--version"], env=env, cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout, done.stderr) == (130, "", ""), program
    # A program importing the package keeps its KeyboardInterrupt.
    done = subprocess.run([sys.executable, "-c", "import claudeproxy"], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr


def test_ctrl_c_before_the_signal_handlers_stops_without_a_traceback(monkeypatch: Any) -> None:
    from claudeproxy import commands

    def interrupted() -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "main", interrupted)
    try:
        status = commands.process_main()
    except KeyboardInterrupt:  # (not raised on: it would stop the whole test run)
        pytest.fail("the KeyboardInterrupt got out of process_main")
    assert status == 130


def _read_until(sock: socket.socket, marker: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        piece = sock.recv(65536)
        assert piece, data
        data += piece
    return data


def _read_to_eof(sock: socket.socket, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        piece = sock.recv(65536)
        if not piece:
            return data
        data += piece


def test_plain_http_to_a_remote_upstream_is_warned_about(tmp_path: Any) -> None:
    # RELIABILITY.md 5.6: the key would travel in clear text. The process starts, warns, and stops.
    # The URL's own secret (Gemini-style ?key=) is masked in the listening line.
    upstream = "http://example.test/v1?key=QUERY-SECRET-123"
    argv = [sys.executable, "-m", "claudeproxy", "--port", "0", "--upstream", upstream]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
    try:
        # SIGTERM right after the line: the handler is in place before the line is printed.
        first = _readline(proc.stdout, 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    match = LISTEN_RE.match(first)
    assert match and match.group(2) == "http://example.test/v1?key=***", first
    assert proc.returncode == 0
    assert "plain http" in err
    assert UPSTREAM_KEY not in first + out + err and "QUERY-SECRET-123" not in first + out + err


def test_a_gateway_given_a_known_dialect_still_starts_without_a_key(served: List[Any]) -> None:
    # "Known to need a key" is the host's (api.openai.com), not the dialect's: --provider openai in
    # front of a gateway that admits callers by address starts, with the warning.
    code, _, err = run_main(["--upstream", "https://gateway.corp.example/v1", "--provider", "openai"])
    assert code == 0, err
    lines = [line for line in _start_warnings(served[0], {}) if "gets no API key" in line]
    assert lines and "expect 401s" in lines[0], lines


def test_a_library_route_a_flag_shadows_is_named_by_its_place_in_the_routes_given() -> None:
    """Counted in the merged list, the warning named routes[1] for the caller's routes[0] (a review)."""
    server = claudeproxy.start(providers=(Provider("p", "http://127.0.0.1:9/v1"),), sonnet_model="flag-sonnet",
                               routes=(Route("claude-sonnet-4-5*", RouteTarget("p", "n")), Route("*", RouteTarget("p", "m"))),
                               port=0)
    try:
        assert [line.split(" ")[0] for line in cli.shadowed_routes(server.server)] == ["routes[0]"]
    finally:
        server.shutdown(grace=0.1)


def test_the_warning_about_routes_a_flag_shadows_compares_no_pair_of_file_routes(monkeypatch: Any) -> None:
    """It compared every pair of routes: thousands of them in a config file took minutes to start
    (probe T). Only a flag's route can shadow a file's: each file route is compared with those."""
    from claudeproxy.config import Provider, Route, RouteTarget

    calls = []
    real = cli.covers
    monkeypatch.setattr(cli, "covers", lambda a, b: calls.append(1) or real(a, b))
    routes = tuple(Route(f"model-{i}", RouteTarget("local", f"m{i}")) for i in range(3000))
    running = claudeproxy.start(providers=(Provider("local", "http://127.0.0.1:9/v1"),), routes=routes,
                                model_map=(("model-1*", "flagged"),))
    try:
        shadowed = cli.shadowed_routes(running.server)
    finally:
        running.shutdown(grace=0.1)
    assert len(shadowed) == 1111 and shadowed[0].startswith("routes[1] ('model-1') is never used while --model-map")
    assert len(calls) < 10_000, len(calls)


@pytest.mark.parametrize("argv0, package, said", [
    ("/home/u/claudeproxy/claudeproxy/__main__.py", "claudeproxy", "python3 -m claudeproxy"),
    ("/srv/app/myapp/vendor/cp/__main__.py", "myapp.vendor.cp", "python3 -m myapp.vendor.cp"),
    ("claudeproxy.pyz", "claudeproxy", "python3 claudeproxy.pyz"),
    ("/opt/tools/cp.pyz", "claudeproxy", "python3 /opt/tools/cp.pyz"),
    ("/usr/local/bin/claudeproxy", "claudeproxy", "claudeproxy"),
    ("/home/u/My Downloads/cp.pyz", "claudeproxy", "python3 '/home/u/My Downloads/cp.pyz'"),
])
def test_the_help_recipes_name_the_way_this_copy_was_started(argv0: str, package: str, said: str) -> None:
    """The one file's and a vendored copy's --help told their users to run `python3 -m claudeproxy`,
    which is no module there (probe Z, D5)."""
    from claudeproxy.claude_code import help_footer, invocation, run_epilog
    program = invocation(argv0, package)
    assert program == said
    assert f"in one step:  {said} run --upstream URL" in help_footer(8082, program)
    assert run_epilog(program).endswith(f"\n  {said} run --upstream https://api.openai.com/v1 --api-key-env "
                                        "OPENAI_API_KEY --model gpt-4.1 -- claude")


@pytest.mark.parametrize("argv, hint", [
    (["--log-file", "x.log"], "(--log-file is claudeproxy run's; the server itself logs to stderr)"),
    (["--trust"], "(--trust is claudeproxy run's)"),
    (["--upstream", "http://127.0.0.1:9/v1", "--", "claude"],
     " run [OPTIONS] -- COMMAND)"),  # after the way it was started: python3 -m claudeproxy here
    (["--upstream-a", "responses"], "(did you mean --upstream-api?)"),  # a flag's start is no flag
])
def test_a_flag_of_run_or_a_flags_start_given_to_the_server_is_said_as_such(served: List[Any], argv: List[str],
                                                                          hint: str) -> None:
    """`--log-file` got "did you mean --log-level?", a forgotten `run` no hint, and `--upstream-a` was
    taken for --upstream-api without a word (probe Z, N12, N9, N13)."""
    code, out, err = run_main(argv, {"OPENAI_API_KEY": ENV_KEY})
    assert_usage_error(code, out, err, hint)


def test_an_empty_client_key_variable_stops_the_start(served: List[Any]) -> None:
    """export CLAUDEPROXY_AUTH_KEY=$KEY with KEY unset started a proxy that took any client (probe Z, N5)."""
    code, out, err = run_main([], {"OPENAI_API_KEY": ENV_KEY, "CLAUDEPROXY_AUTH_KEY": ""})
    assert_usage_error(code, out, err, "CLAUDEPROXY_AUTH_KEY: the variable is set but empty")


def test_a_model_name_with_blanks_around_it_stops_the_start(served: List[Any]) -> None:
    """--model-map strips its names, and --model sent ' gpt-4.1' as it was: no upstream has it (probe Z)."""
    code, out, err = run_main(["--model", " gpt-4.1"], {"OPENAI_API_KEY": ENV_KEY})
    assert_usage_error(code, out, err, "--model: the upstream model name ' gpt-4.1' has blanks around it")
