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


def test_mcp_servers_are_left_out_with_a_warning(post, fake_upstream, caplog):
    """The MCP connector (mcp_servers) is Anthropic's side connecting to the servers: a translated
    request cannot carry them. The answer comes without their tools, and the operator is told once."""
    caplog.set_level(logging.DEBUG, logger="claudeproxy")
    servers = [{"type": "url", "url": "https://mcp.example/sse", "name": "wiki", "authorization_token": "tok-123"},
               {"type": "url", "url": "https://mcp.example/2"}]
    for _ in range(2):
        resp = post(minimal_request(mcp_servers=servers))
        assert resp.status == 200, resp
        assert "mcp_servers" not in fake_upstream.last.json and "tok-123" not in fake_upstream.last.body.decode()
    about = [r for r in caplog.records if "MCP servers" in r.getMessage()]
    assert [r.levelno for r in about] == [logging.WARNING, logging.DEBUG]
    assert about[0].getMessage().endswith(": wiki, (unnamed)")
    assert all("tok-123" not in r.getMessage() for r in caplog.records if r.name != "claudeproxy.bodies")


def test_mcp_servers_of_the_wrong_type_are_a_400(post):
    resp = post(minimal_request(mcp_servers={"name": "wiki"}))
    assert resp.status == 400 and "mcp_servers" in resp.json["error"]["message"]
