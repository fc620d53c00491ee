"""Providers and routes, pure: Claude families of every generation, first match wins, shorthand flags,
start-up checks (issue 6: routes; bad input at start)."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import pytest

from claudeproxy.config import Config, Provider, Route, RouteTarget
from claudeproxy.model_facts import ModelFacts
from claudeproxy.routing import build_router, claude_family, covers, route_matches, unmatched_route

OPENAI = Provider("openai", "https://api.openai.com/v1")
LOCAL = Provider("local", "http://localhost:11434/v1")
NATIVE = Provider("native", "https://api.deepseek.com/anthropic", api="messages")


def where(config: Config, name: str) -> Optional[Tuple[str, str]]:
    routed = build_router(config).resolve(name)
    return (routed.target.provider.name, routed.target.model) if routed else None


# ---------------------------------------------------------------------------
# Claude families.


@pytest.mark.parametrize("name, family", [
    # Current naming: claude-<family>-<generation>[-date]
    ("claude-opus-4-1", "opus"), ("claude-opus-4-1-20250805", "opus"), ("claude-opus-4-5", "opus"),
    ("claude-opus-5-5", "opus"), ("claude-sonnet-4-5-20250929", "sonnet"), ("claude-sonnet-4-6", "sonnet"),
    ("claude-sonnet-5-5", "sonnet"), ("claude-haiku-4-5", "haiku"), ("claude-haiku-5-5", "haiku"),
    ("claude-sonnet-4-20250514", "sonnet"), ("claude-opus-4-20250514", "opus"),
    # Old naming: claude-<generation>-<family>[-date|-latest]
    ("claude-3-5-haiku-latest", "haiku"), ("claude-3-5-haiku-20241022", "haiku"), ("claude-3-opus-20240229", "opus"),
    ("claude-3-5-sonnet-latest", "sonnet"), ("claude-3-7-sonnet-20250219", "sonnet"), ("claude-3-haiku-20240307", "haiku"),
    # Aliases Claude Code accepts, the 1M-context suffix, and cloud spellings.
    ("opus", "opus"), ("sonnet", "sonnet"), ("haiku", "haiku"), ("opusplan", "opus"), ("sonnet[1m]", "sonnet"),
    ("claude-sonnet-4-5[1m]", "sonnet"), ("Claude-Opus-4-1", "opus"), ("claude-opus-4-1@20250805", "opus"),
    ("anthropic.claude-3-5-sonnet-20240620-v1:0", "sonnet"), ("us.anthropic.claude-sonnet-4-20250514-v1:0", "sonnet"),
    ("anthropic/claude-sonnet-4", "sonnet"),
    # Not Claude families.
    ("claude-2.1", None), ("claude-instant-1.2", None), ("gpt-4o", None), ("opus-magnum-7b", None),
    ("sonnet-writer", None), ("my-haiku-model", None), ("", None),
])
def test_claude_family_of_every_generation(name: str, family: Optional[str]) -> None:
    assert claude_family(name) == family


@pytest.mark.parametrize("pattern, name, hit", [
    ("*", "anything", True), ("opus", "claude-opus-4-1", True), ("opus", "claude-3-opus-20240229", True),
    ("opus", "claude-sonnet-4-5", False), ("claude-haiku*", "claude-haiku-4-5", True),
    ("claude-haiku*", "claude-3-5-haiku-latest", False), ("gpt-4o", "gpt-4o", True), ("gpt-4o", "gpt-4o-mini", False),
    ("gpt-?o", "gpt-4o", True), ("[ab]-model", "a-model", True),
    # A family in any case, as the product is spelt ("Opus"): no model is named so.
    ("Opus", "claude-opus-4-1", True), ("SONNET", "claude-3-7-sonnet-20250219", True), ("Haiku", "haiku", True),
    ("Opus", "claude-sonnet-4-5", False),
    # Exact names and globs stay as written: an upstream's own name may differ by case alone.
    ("GPT-4o", "gpt-4o", False), ("Claude-Opus-*", "claude-opus-4-1", False),
])
def test_route_patterns(pattern: str, name: str, hit: bool) -> None:
    assert route_matches(pattern, name) is hit


@pytest.mark.parametrize("earlier, later, shadowed", [
    ("*", "opus", True), ("*", "gpt-4o", True), ("opus", "claude-opus-4-1", True), ("opus", "opus", True),
    ("claude-*", "claude-opus-*", True), ("claude-*", "claude-opus-4-1", True), ("claude-*", "opus", False),
    ("claude-opus-*", "claude-*", False), ("opus", "sonnet", False), ("gpt-4o", "gpt-4o-mini", False),
    ("gpt-?o", "gpt-4o", True), ("haiku", "claude-3-5-haiku-latest", True),
    ("opus", "Opus", True), ("Sonnet", "claude-sonnet-4-5", True), ("gpt-4o", "GPT-4o", False),
    # A glob whose fixed start names the family: every name it matches is the family's.
    ("sonnet", "claude-sonnet-4-5*", True), ("haiku", "claude-haiku-4-5*", True), ("opus", "claude-opus-4*", True),
    ("Sonnet", "Claude-Sonnet-4-?", True), ("sonnet", "claude-3-5-sonnet-*", True),
    ("sonnet", "claude-sonnet*", False),  # claude-sonnetx is no Sonnet
    ("sonnet", "claude-*", False), ("sonnet", "claude-opus-4*", False), ("sonnet", "sonnet-*", False),
    ("sonnet", "claude-sonnet-4-5[12]", True), ("opus", "anthropic.claude-opus-4-1*", True),
])
def test_unreachable_routes_are_recognised(earlier: str, later: str, shadowed: bool) -> None:
    assert covers(earlier, later) is shadowed


# ---------------------------------------------------------------------------
# Resolution.

CLAUDE_CODE_NAMES = ["claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5", "claude-opus-4-1",
                     "claude-sonnet-4-5-20250929", "claude-3-5-haiku-latest", "claude-sonnet-4-6", "opus", "haiku"]


def test_family_flags_route_every_generation() -> None:
    config = Config(upstream=OPENAI.url, opus_model="o3", sonnet_model="gpt-4.1", haiku_model="gpt-4o-mini")
    assert [where(config, n) for n in CLAUDE_CODE_NAMES] == [
        ("upstream", "o3"), ("upstream", "gpt-4.1"), ("upstream", "gpt-4o-mini"), ("upstream", "o3"),
        ("upstream", "gpt-4.1"), ("upstream", "gpt-4o-mini"), ("upstream", "gpt-4.1"), ("upstream", "o3"),
        ("upstream", "gpt-4o-mini")]
    # Anything else still goes upstream under its own name.
    assert where(config, "gpt-4o") == ("upstream", "gpt-4o")


def test_a_missing_family_borrows_the_nearest_so_claude_code_never_fails() -> None:
    config = Config(upstream=OPENAI.url, opus_model="o3")
    assert where(config, "claude-haiku-4-5") == ("upstream", "o3")
    assert where(config, "claude-sonnet-4-5") == ("upstream", "o3")
    config = Config(upstream=OPENAI.url, sonnet_model="gpt-4.1", haiku_model="gpt-4o-mini")
    assert where(config, "claude-opus-4-1") == ("upstream", "gpt-4.1")


LATER_NAMES = ["claude-fable-5-2", "claude-fable-5", "claude-mythos-5-2", "fable", "claude-fable-5-2[1m]"]


def test_the_later_families_claude_code_offers_borrow_the_most_capable_given() -> None:
    """Claude Code 2.1.331's /model offers Fable (claude-fable-5-2) beside Opus, Sonnet and Haiku: with
    family flags only it went upstream under its Claude name, a 404 on every real upstream."""
    config = Config(upstream=OPENAI.url, opus_model="o3", sonnet_model="gpt-4.1", haiku_model="gpt-4o-mini")
    assert [where(config, n) for n in LATER_NAMES] == [("upstream", "o3")] * len(LATER_NAMES)
    config = Config(upstream=OPENAI.url, haiku_model="gpt-4o-mini")
    assert where(config, "claude-fable-5-2") == ("upstream", "gpt-4o-mini")
    # --model-map names them as it names the others, and its route is not shadowed by a borrowed one.
    config = Config(upstream=OPENAI.url, opus_model="o3", model_map=(("fable", "gpt-5.5"),))
    assert where(config, "claude-fable-5-2") == ("upstream", "gpt-5.5")
    assert where(config, "claude-mythos-5") == ("upstream", "o3")
    assert where(config, "claude-opus-5-5") == ("upstream", "o3")  # Opus is not Fable, nor the reverse
    # --model is the default for them too.
    assert where(Config(upstream=OPENAI.url, model="gpt-4.1"), "claude-fable-5-2") == ("upstream", "gpt-4.1")
    # --model-map's families and globs (the README's own style) are served as the flags are.
    config = Config(upstream=OPENAI.url, model_map=(("claude-opus*", "gpt-5"), ("claude-sonnet*", "gpt-4.1")))
    assert where(config, "claude-fable-5-2") == ("upstream", "gpt-5")
    config = Config(upstream=OPENAI.url, sonnet_model="gpt-4.1", model_map=(("opus", "gpt-5"),))
    assert where(config, "claude-mythos-5") == ("upstream", "gpt-5")  # Opus's, not the flag's Sonnet


def test_the_later_families_take_a_config_files_opus_route_with_its_fallbacks() -> None:
    fallback = RouteTarget("openai", "gpt-4.1")
    config = Config(providers=(LOCAL, OPENAI), routes=(
        Route("sonnet", RouteTarget("local", "qwen3:32b")),
        Route("claude-opus-*", RouteTarget("openai", "o3"), (fallback,)),
        Route("claude-fable-5", RouteTarget("local", "fable-own"))))
    routed = build_router(config).resolve("claude-fable-5-2")
    assert routed is not None and [(t.provider.name, t.model) for t in routed.targets] == [
        ("openai", "o3"), ("openai", "gpt-4.1")]
    assert where(config, "claude-fable-5") == ("local", "fable-own")  # its own route stays first
    # Without an Opus route, Sonnet's.
    config = Config(providers=(LOCAL,), routes=(Route("sonnet", RouteTarget("local", "qwen3:32b")),))
    assert where(config, "claude-mythos-5-2") == ("local", "qwen3:32b")
    # A name passed on to a server of Anthropic's API is one it knows: left so.
    config = Config(upstream="http://127.0.0.1:9", upstream_api="messages", model_map=(("opus", "x"),))
    assert where(config, "claude-fable-5-2") == ("upstream", "claude-fable-5-2")
    # A file that routes no Claude family lends nothing.
    config = Config(providers=(LOCAL,), routes=(Route("gpt-*", RouteTarget("local", None)),))
    assert where(config, "claude-fable-5-2") is None


def test_a_family_mapped_by_model_map_borrows_nothing_that_would_shadow_it() -> None:
    # --model-map 'opus=...' beside --sonnet-model: the borrowed opus route came after the mapped one,
    # which took every name it would, and the start stopped ("can never match").
    config = Config(upstream=OPENAI.url, sonnet_model="gpt-4.1", model_map=(("opus", "gpt-5"),))
    routes = build_router(config).routes
    assert [r.match for r in routes].count("opus") == 1
    assert where(config, "claude-opus-5-5") == ("upstream", "gpt-5")
    assert where(config, "claude-haiku-5-5") == ("upstream", "gpt-4.1")


def test_a_borrowing_family_leaves_a_config_files_own_name_to_its_route() -> None:
    # The file routes the name Claude Code 2.1.331 sends for opus; --sonnet-model alone made opus
    # borrow sonnet's model ahead of it (the check asked about claude-opus-4-5), so the file's
    # route was dead. The borrowed route is a default now: after the file's, before the catch-all.
    config = Config(providers=(LOCAL,), routes=(Route("claude-opus-5-5", RouteTarget("local", "qwen3:32b")),),
                    upstream=OPENAI.url, sonnet_model="gpt-4.1")
    assert where(config, "claude-opus-5-5") == ("local", "qwen3:32b")
    assert where(config, "claude-opus-4-1") == ("upstream", "gpt-4.1")  # the family's other names borrow
    assert where(config, "claude-haiku-5-5") == ("upstream", "gpt-4.1")
    # A file pattern taking every name of the family routes it whole: nothing is borrowed for it.
    config = Config(providers=(LOCAL,), routes=(Route("claude-opus-*", RouteTarget("local", "qwen3:32b")),),
                    upstream=OPENAI.url, sonnet_model="gpt-4.1")
    assert [r.match for r in build_router(config).routes].count("opus") == 0


def test_model_flag_is_the_default_and_model_map_comes_first() -> None:
    config = Config(upstream=OPENAI.url, model="gpt-4.1", haiku_model="gpt-4o-mini",
                    model_map=(("claude-3-5-haiku*", "gpt-4.1-nano"), ("my-alias", "o3")))
    assert where(config, "claude-3-5-haiku-latest") == ("upstream", "gpt-4.1-nano")
    assert where(config, "claude-haiku-4-5") == ("upstream", "gpt-4o-mini")
    assert where(config, "claude-opus-4-1") == ("upstream", "gpt-4.1")
    assert where(config, "my-alias") == ("upstream", "o3")
    assert where(config, "anything-else") == ("upstream", "gpt-4.1")


def test_without_any_model_flag_names_pass_through() -> None:
    assert where(Config(upstream=OPENAI.url), "claude-opus-4-1") == ("upstream", "claude-opus-4-1")


def test_config_routes_first_match_wins_with_fallbacks() -> None:
    routes = (
        Route("claude-opus-4-1", RouteTarget("openai", "o3-pro")),
        Route("opus", RouteTarget("openai", "o3"), fallbacks=(RouteTarget("local", "qwen3:32b"),)),
        Route("haiku", RouteTarget("local", "qwen3:8b")),
        Route("*", RouteTarget("openai", "gpt-4.1")),
    )
    config = Config(providers=(OPENAI, LOCAL), routes=routes)
    router = build_router(config)
    routed = router.resolve("claude-opus-4-5")
    assert routed is not None
    assert [t.label for t in routed.targets] == ["openai/o3", "local/qwen3:32b"]
    assert where(config, "claude-opus-4-1") == ("openai", "o3-pro")
    assert where(config, "claude-3-5-haiku-latest") == ("local", "qwen3:8b")
    assert where(config, "claude-sonnet-4-5") == ("openai", "gpt-4.1")


@pytest.mark.parametrize("routes", [
    (Route("Opus", RouteTarget("openai", "o3")), Route("*", RouteTarget("local", "qwen3:8b"))),
    (Route("opus", RouteTarget("openai", "o3")), Route("*", RouteTarget("local", "qwen3:8b"))),
])
def test_a_capitalised_family_route_serves_that_family(routes: Tuple[Route, ...]) -> None:
    config = Config(providers=(OPENAI, LOCAL), routes=routes)
    assert where(config, "claude-opus-4-1") == ("openai", "o3")
    assert where(config, "claude-sonnet-4-5") == ("local", "qwen3:8b")
    # /v1/models lists the family as Claude Code names it, not a model called "Opus".
    assert [name for name, _ in build_router(config).served()][:1] == ["opus"]


def test_a_capitalised_family_in_model_map_serves_that_family() -> None:
    config = Config(upstream=OPENAI.url, model="gpt-4.1", model_map=(("Sonnet", "big"),))
    assert where(config, "claude-sonnet-4-5-20250929") == ("upstream", "big")
    assert where(config, "claude-opus-4-1") == ("upstream", "gpt-4.1")


def test_a_family_flag_replaces_the_files_route_of_that_family_in_any_case() -> None:
    config = Config(providers=(OPENAI,), routes=(Route("Sonnet", RouteTarget("openai", "file")),
                                                 Route("*", RouteTarget("openai", "rest"))),
                    model_map=(("sonnet", "flag"),))
    assert where(config, "claude-sonnet-4-5") == ("openai", "flag")
    assert [r.match for r in build_router(config).routes] == ["sonnet", "*"]
    # And the other way round: --model-map Opus=flag over the file's "opus" route.
    config = Config(providers=(OPENAI,), routes=(Route("opus", RouteTarget("openai", "file")),
                                                 Route("*", RouteTarget("openai", "rest"))),
                    model_map=(("Opus", "flag"),))
    assert where(config, "claude-opus-4-1") == ("openai", "flag")
    assert [r.match for r in build_router(config).routes] == ["Opus", "*"]


@pytest.mark.parametrize("pattern, warned, hint", [
    # Meant for Claude Code, and no name it sends can match: said at start, with a mended spelling.
    ("claude-sonet*", True, "did you mean 'claude-sonnet*'?"),
    ("claud-opus-*", True, "did you mean 'claude-opus-*'?"),
    ("Claude-Opus-4-1", True, "did you mean 'claude-opus-4-1'?"),
    ("sonet", True, "did you mean 'sonnet'?"),
    ("sonnet-4.5", True, "did you mean 'sonnet'? (a family name matches every generation of it)"),
    # A glob in the wrong case, or without Claude Code's "claude-": the family, or the mended glob.
    ("Opus*", True, "did you mean 'opus'?"), ("OPUS*", True, "did you mean 'opus'?"),
    ("sonnet*", True, "did you mean 'sonnet'?"), ("*Sonnet*", True, "did you mean '*sonnet*'?"),
    ("claude-instant-1", True, "a family name"),
    # A family word after versions or the clouds' words is still Claude's.
    ("3-5-sonnet*", True, "did you mean 'sonnet'?"), ("latest-sonnet", True, "did you mean 'sonnet'?"),
    ("bedrock:sonnet*", True, "did you mean 'sonnet'?"), ("anthropic.haiku*", True, "did you mean 'haiku'?"),
    # Reachable: a family in any case, names and globs Claude Code's names can match, other generations.
    ("Opus", False, ""), ("haiku", False, ""), ("*", False, ""), ("claude-*", False, ""), ("*sonnet*", False, ""),
    ("claude-sonnet*", False, ""), ("claude-3-7-sonnet*", False, ""), ("claude-sonnet-4-20250514", False, ""),
    ("anthropic.claude-3-5-sonnet-20240620-v1:0", False, ""), ("claude-opus-4-1", False, ""),
    # Not about Claude at all: another client's names (o3, llama) are not second-guessed.
    ("gpt-4o", False, ""), ("GPT-4o", False, ""), ("deepseek-*", False, ""), ("sonar", False, ""),
    ("llama3.1:8b", False, ""), ("o3", False, ""), ("Helsinki-NLP/opus-mt-en-de", False, ""),
    # A family word inside another name is that name's, not Claude's.
    ("my-haiku-poet", False, ""), ("gpt-sonnet-*", False, ""), ("team_opus", False, ""),
    ("haiku*", True, "did you mean 'haiku'?"),
])
def test_a_route_no_claude_code_name_can_reach_is_told(pattern: str, warned: bool, hint: str) -> None:
    why = unmatched_route(pattern)
    assert bool(why) == warned, why
    if warned:
        assert why is not None and why.startswith(f"pattern {pattern!r} matches none of the model names Claude Code")
        assert hint in why, why


def test_a_route_written_twice_in_two_cases_can_never_match() -> None:
    config = Config(providers=(OPENAI,), routes=(Route("opus", RouteTarget("openai", "a")),
                                                 Route("OPUS", RouteTarget("openai", "b"))))
    with pytest.raises(ValueError, match="pattern 'OPUS' can never match"):
        build_router(config)


def test_no_match_and_no_default_resolves_to_none() -> None:
    config = Config(providers=(OPENAI,), routes=(Route("opus", RouteTarget("openai", "o3")),))
    assert where(config, "claude-sonnet-4-5") is None
    assert where(config, "claude-opus-4-1") == ("openai", "o3")


def test_flags_override_the_file_routes() -> None:
    """A model flag with a config file: its route comes first, on the provider of the file's default route."""
    config = Config(providers=(OPENAI, LOCAL), routes=(Route("*", RouteTarget("local", "qwen3:8b")),),
                    haiku_model="qwen3:1.7b")
    assert where(config, "claude-haiku-4-5") == ("local", "qwen3:1.7b")
    assert where(config, "claude-opus-4-1") == ("local", "qwen3:8b")


def test_model_flag_is_the_default_after_the_file_routes_not_before_them() -> None:
    # README: --model serves "every request not routed otherwise". Before it was put first and every
    # route of the file was shadowed; a file's own "*" gives way to it (the command line wins).
    file_routes = (Route("opus", RouteTarget("openai", "o3")), Route("sonnet", RouteTarget("local", "qwen3:8b")),
                   Route("*", RouteTarget("local", "qwen3:1.7b")))
    for flags in ({"model": "gpt-4.1"}, {"model_map": (("*", "gpt-4.1"),)}):
        config = Config(providers=(OPENAI, LOCAL), routes=file_routes, **flags)  # type: ignore[arg-type]
        assert where(config, "claude-opus-4-1") == ("openai", "o3")
        assert where(config, "claude-sonnet-4-5") == ("local", "qwen3:8b")
        assert where(config, "claude-haiku-4-5") == ("local", "gpt-4.1")
        assert where(config, "gpt-oss") == ("local", "gpt-4.1")


def test_a_family_flag_replaces_the_file_route_of_that_family_only() -> None:
    """The flag names the model of the file's route for its family: that route keeps its provider
    and fallbacks. It went to the provider of the file's '*' route (here a local server asked for
    OpenAI's o4-mini), another API and key, without a word (probe T)."""
    config = Config(providers=(OPENAI, LOCAL), routes=(Route("opus", RouteTarget("openai", "o3"),
                                                             (RouteTarget("local", "qwen3:32b"),)),
                                                       Route("*", RouteTarget("local", "qwen3:8b"))),
                    opus_model="o4-mini")
    router = build_router(config)
    routed = router.resolve("claude-opus-4-1")
    assert routed is not None
    assert [(t.provider.name, t.model) for t in routed.targets] == [("openai", "o4-mini"), ("local", "qwen3:32b")]
    assert where(config, "claude-sonnet-4-5") == ("local", "qwen3:8b")


def test_a_family_flag_without_a_file_route_goes_where_the_catch_all_goes_with_its_fallbacks() -> None:
    """With no file route for Opus, --opus-model took the '*' route's provider but dropped its
    fallbacks, which had served Opus until the flag was given (a verification)."""
    config = Config(providers=(LOCAL, OPENAI), routes=(Route("*", RouteTarget("openai", "gpt-4.1"),
                                                             (RouteTarget("local", "qwen3:8b"),)),),
                    opus_model="o3")
    routed = build_router(config).resolve("claude-opus-4-1")
    assert routed is not None
    assert [(t.provider.name, t.model) for t in routed.targets] == [("openai", "o3"), ("local", "qwen3:8b")]


def test_a_family_flag_goes_where_the_file_sent_that_familys_names() -> None:
    """A file routing Opus under a pattern of its own ('claude-opus-*') and --opus-model: the flag's
    route went to the '*' route's provider (another API and key, a model it may not have), with
    only a warning that the file's route was now unused. It keeps that route's provider and
    fallbacks, as a flag does for a file route of its own match."""
    config = Config(providers=(LOCAL, OPENAI), routes=(Route("claude-opus-*", RouteTarget("openai", "o3"),
                                                             (RouteTarget("local", "qwen3:32b"),)),
                                                       Route("*", RouteTarget("local", "qwen3:8b"))),
                    opus_model="o4-mini")
    router = build_router(config)
    for name in ("claude-opus-5-5", "claude-opus-4-1", "opus"):
        routed = router.resolve(name)
        assert routed is not None
        assert [(t.provider.name, t.model) for t in routed.targets] == [("openai", "o4-mini"), ("local", "qwen3:32b")]
    assert where(config, "claude-sonnet-4-5") == ("local", "qwen3:8b")
    # A route for the generation before takes a name Claude Code sent too (claude-opus-4-5): the family's.
    older = dataclasses.replace(config, routes=(Route("claude-opus-4*", RouteTarget("openai", "o3")),
                                                Route("*", RouteTarget("local", "qwen3:8b"))))
    assert where(older, "claude-opus-5-5") == ("openai", "o4-mini")
    # One for a name Claude Code never sends is not: the '*' route's provider.
    other = dataclasses.replace(config, routes=(Route("claude-opus-3*", RouteTarget("openai", "o3")),
                                                Route("*", RouteTarget("local", "qwen3:8b"))))
    assert where(other, "claude-opus-5-5") == ("local", "o4-mini")
    # With --upstream every flag goes to that upstream.
    assert where(dataclasses.replace(config, upstream="http://127.0.0.1:9/v1"), "claude-opus-5-5") == \
        ("upstream", "o4-mini")


def test_a_family_flag_does_not_follow_a_broad_claude_route() -> None:
    """'claude-*' to an Anthropic passthrough and '*' to OpenRouter: --opus-model openai/gpt-5 went to
    Anthropic, which has no such model (review X). Only a route whose pattern names the family is
    where the file sent that family; else the '*' route's provider, as before."""
    native = Provider("anthropic", "https://api.anthropic.com", api="messages")
    config = Config(providers=(native, OPENAI), routes=(Route("claude-*", RouteTarget("anthropic", None)),
                                                        Route("*", RouteTarget("openai", "gpt-4.1"))),
                    opus_model="o3")
    assert where(config, "claude-opus-5-5") == ("openai", "o3")
    # A route for the generation before takes Claude Code's older name: it is the family's.
    older = dataclasses.replace(config, routes=(Route("*opus-4*", RouteTarget("anthropic", None)),
                                                Route("*", RouteTarget("openai", "gpt-4.1"))))
    assert where(older, "claude-opus-5-5") == ("anthropic", "o3")


def test_a_family_without_its_flag_borrows_where_the_lender_goes() -> None:
    """A family the file does not route borrows a flag's model with its provider: the model on the
    '*' route's provider was a model that provider does not have."""
    config = Config(providers=(LOCAL, OPENAI), routes=(Route("opus", RouteTarget("openai", "o3")),
                                                       Route("haiku", RouteTarget("local", "qwen3:8b"))),
                    opus_model="o4-mini")
    assert where(config, "claude-sonnet-4-5") == ("openai", "o4-mini")
    assert where(config, "claude-haiku-4-5") == ("local", "qwen3:8b")


def test_thousands_of_routes_are_checked_without_comparing_every_pair(monkeypatch: Any) -> None:
    """Each route was compared with every route before it: 2,000 routes took 13 s to start and 8,000
    more than 2 minutes (probe T). An exact name is looked up among the names before it and compared
    with the patterns only; the shadowing is still found."""
    from claudeproxy import routing

    calls = []
    real = routing.covers
    monkeypatch.setattr(routing, "covers", lambda a, b: calls.append(1) or real(a, b))
    many = tuple(Route(f"model-{i}", RouteTarget("openai", f"m{i}")) for i in range(3000))
    config = Config(providers=(OPENAI,), routes=many + (Route("claude-*", RouteTarget("openai", "c")),
                                                        Route("*", RouteTarget("openai", "d"))))
    assert where(config, "model-2999") == ("openai", "m2999")
    assert len(calls) < 10_000, len(calls)
    with pytest.raises(ValueError, match=r"routes\[3000\]: pattern 'model-7' can never match: routes\[7\]"):
        build_router(Config(providers=(OPENAI,), routes=many + (Route("model-7", RouteTarget("openai", "x")),)))
    with pytest.raises(ValueError, match=r"routes\[1\]: pattern 'claude-opus-4' can never match: routes\[0\]"):
        build_router(Config(providers=(OPENAI,), routes=(Route("claude-*", RouteTarget("openai", "c")),
                                                         Route("claude-opus-4", RouteTarget("openai", "x")))))


def test_a_missing_family_never_borrows_over_the_files_own_route() -> None:
    # The borrowing (a family without its flag takes the nearest given one) is for families nothing
    # else routes; a file that routes sonnet and haiku keeps them when only --opus-model is given.
    config = Config(providers=(OPENAI,), routes=(Route("sonnet", RouteTarget("openai", "S")),
                                                 Route("claude-3-5-haiku-*", RouteTarget("openai", "H3")),
                                                 Route("haiku", RouteTarget("openai", "H"))),
                    opus_model="O")
    assert where(config, "claude-opus-4-1") == ("openai", "O")
    assert where(config, "claude-sonnet-4-5") == ("openai", "S")
    assert where(config, "claude-haiku-4-5") == ("openai", "H")


# ---------------------------------------------------------------------------
# Targets: API, dialect, facts, caps.


def test_target_carries_api_dialect_and_model_facts() -> None:
    provider = Provider("openai", OPENAI.url, models=(("o3", ModelFacts(context_window=123, max_output=77)),))
    config = Config(providers=(provider, NATIVE), routes=(Route("opus", RouteTarget("openai", "o3")),
                                                           Route("*", RouteTarget("native", "deepseek-chat"))))
    router = build_router(config)
    opus = router.resolve("claude-opus-4-1").target  # type: ignore[union-attr]
    assert (opus.api, opus.dialect.name, opus.facts.context_window, opus.output_cap) == ("chat", "openai", 123, 77)
    assert opus.dialect.max_tokens_field == "max_completion_tokens"  # o3 is a reasoning model
    native = router.resolve("claude-haiku-4-5").target  # type: ignore[union-attr]
    assert (native.api, native.dialect) == ("messages", None)


def test_built_in_output_cap_clamps_before_the_request_leaves() -> None:
    router = build_router(Config(upstream=OPENAI.url, opus_model="o3"))
    target = router.resolve("claude-opus-4-1").target  # type: ignore[union-attr]
    assert target.output_cap is not None and target.output_cap < 128000
    # The tighter of the model's cap and --max-output-tokens wins.
    router = build_router(Config(upstream=OPENAI.url, opus_model="o3", max_output_tokens=4000))
    assert router.resolve("claude-opus-4-1").target.output_cap == 4000  # type: ignore[union-attr]


def test_responses_only_models_switch_api_on_openai_only() -> None:
    router = build_router(Config(upstream=OPENAI.url, opus_model="gpt-5-codex"))
    assert router.resolve("claude-opus-4-1").target.api == "responses"  # type: ignore[union-attr]
    router = build_router(Config(upstream=LOCAL.url, opus_model="gpt-5-codex"))
    assert router.resolve("claude-opus-4-1").target.api == "chat"  # type: ignore[union-attr]


# ---------------------------------------------------------------------------
# Bad settings: one line naming the setting.


@pytest.mark.parametrize("config, part", [
    (Config(providers=(OPENAI,), routes=(Route("*", RouteTarget("nope", "x")),)), "unknown provider 'nope'"),
    (Config(providers=(OPENAI,), routes=(Route("*", RouteTarget("openai", "x"), (RouteTarget("gone", "y"),)),)),
     "unknown provider 'gone'"),
    (Config(providers=(Provider("openai", OPENAI.url, api="grpc"),)), "unknown upstream API 'grpc'"),
    (Config(providers=(Provider("openai", OPENAI.url, dialect="nope"),)), "unknown dialect 'nope'"),
    (Config(providers=(Provider("openai", "ftp://x"),)), "providers.openai.url"),
    (Config(providers=(OPENAI, Provider("openai", LOCAL.url))), "two providers are named 'openai'"),
    (Config(providers=(Provider("upstream", LOCAL.url),), upstream=OPENAI.url), "two providers are named 'upstream'"),
    (Config(providers=(OPENAI,), routes=(Route("*", RouteTarget("openai")), Route("opus", RouteTarget("openai")))),
     "can never match"),
    (Config(providers=(OPENAI,), routes=(Route("claude-*", RouteTarget("openai")),
                                         Route("claude-opus-4-1", RouteTarget("openai")))), "can never match"),
    (Config(providers=(OPENAI,), routes=(Route("", RouteTarget("openai")),)), "non-empty match"),
    (Config(providers=(Provider("bad name", OPENAI.url),)), "provider name"),
    (Config(upstream=OPENAI.url, max_output_tokens=0), "--max-output-tokens"),
    (Config(upstream=OPENAI.url, model_map=(("a", "x"), ("a", "y"))), "can never match"),
])
def test_bad_settings_raise_one_line(config: Config, part: str) -> None:
    with pytest.raises(ValueError) as info:
        build_router(config)
    message = str(info.value)
    assert part in message and "\n" not in message


def test_start_refuses_bad_routes() -> None:
    import claudeproxy

    with pytest.raises(ValueError, match="unknown provider"):
        claudeproxy.start(providers=(OPENAI,), routes=(Route("*", RouteTarget("missing")),))


@pytest.mark.parametrize("url, priced", [
    ("https://api.anthropic.com", True),
    ("https://api.deepseek.com/anthropic", False),   # serves deepseek-v4 under Claude Code's names
    ("https://api.moonshot.ai/anthropic", False),
    ("http://127.0.0.1:8080", False),
])
def test_claude_list_prices_only_on_anthropics_own_api(url: str, priced: bool) -> None:
    """Sonnet 4.5 at $3/$15 where Anthropic bills it; elsewhere the host's own rates, which the
    table does not know: no price (a config price for the provider still applies)."""
    provider = Provider("up", url, api="messages")
    config = Config(providers=(provider,), routes=(Route("*", RouteTarget("up")),))
    facts = build_router(config).resolve("claude-sonnet-4-5-20250929").target.facts  # type: ignore[union-attr]
    assert (facts.input_price, facts.output_price, facts.cache_write_1h_price) == \
        ((3.0, 15.0, 6.0) if priced else (None, None, None))
    overridden = Provider("up", url, api="messages", models=(("claude-*", ModelFacts(input_price=0.5)),))
    config = Config(providers=(overridden,), routes=(Route("*", RouteTarget("up")),))
    assert build_router(config).resolve("claude-sonnet-4-5").target.facts.input_price == 0.5  # type: ignore[union-attr]


def test_on_anthropics_own_api_a_family_without_a_flag_keeps_its_name() -> None:
    """Probe AN 2: --passthrough to Anthropic with --haiku-model alone sent Claude Code's opus and
    sonnet calls to the small model too; Anthropic serves their own names. Elsewhere (a local
    Messages server, an OpenAI-compatible one) the nearest family's model still serves them."""
    anthropic = build_router(Config(upstream="https://api.anthropic.com", passthrough=True,
                                    haiku_model="claude-haiku-4-5"))
    assert anthropic.resolve("claude-haiku-4-5-20251001").target.model == "claude-haiku-4-5"
    assert anthropic.resolve("claude-opus-5-5").target.model == "claude-opus-5-5"
    local = build_router(Config(upstream="http://127.0.0.1:8080", passthrough=True, haiku_model="qwen3"))
    assert local.resolve("claude-opus-5-5").target.model == "qwen3"


def test_on_anthropics_own_api_a_file_without_a_catch_all_still_serves_every_family() -> None:
    """Review AO 1: with a config file's Anthropic provider and no '*' route, dropping the loan left
    Claude Code's opus and sonnet calls without any route: they go to Anthropic under their names."""
    router = build_router(Config(providers=(Provider("anth", "https://api.anthropic.com", api="messages"),),
                                 haiku_model="claude-haiku-4-5"))
    opus = router.resolve("claude-opus-5-5")
    assert opus is not None and (opus.target.provider.name, opus.target.model) == ("anth", "claude-opus-5-5")
    assert router.resolve("claude-haiku-4-5").target.model == "claude-haiku-4-5"
