"""What the proxy tells its operator about requests it had to change (FIELD-NOTES 11)."""

import logging

from conftest import minimal_request

WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
READ = {"name": "read", "description": "Read a file", "input_schema": {"type": "object", "properties": {}}}


def test_dropped_server_tool_is_warned_about_once_not_per_request(post, fake_upstream, caplog):
    caplog.set_level(logging.DEBUG, logger="claudeproxy")
    for _ in range(3):
        resp = post(minimal_request(tools=[READ, WEB_SEARCH]))
        assert resp.status == 200, resp
        assert [t["function"]["name"] for t in fake_upstream.last.json["tools"]] == ["read"]
    # (the raw bodies, logged at DEBUG too, name the tool as well)
    about = [r for r in caplog.records if "web_search" in r.getMessage() and r.name != "claudeproxy.bodies"]
    assert [r.levelno for r in about] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "web_search_20250305" in about[0].getMessage()


def test_a_different_dropped_tool_is_warned_about_again(post, caplog):
    caplog.set_level(logging.DEBUG, logger="claudeproxy")
    post(minimal_request(tools=[READ, WEB_SEARCH]))
    post(minimal_request(tools=[READ, {"type": "web_fetch_20250910", "name": "web_fetch"}]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("web_search" in m for m in warnings) and any("web_fetch" in m for m in warnings)
