"""The shortest path through the whole proxy: one JSON and one streamed answer."""

from conftest import CLIENT_KEY, ROOT, UPSTREAM_KEY, minimal_request
from fakes import chunk, sse_reply
from sse_checks import assert_valid_event_sequence, events_of, final_message


def test_non_streaming_round_trip(post, fake_upstream):
    resp = post(minimal_request())
    assert resp.status == 200, resp
    assert resp.json["content"] == [{"type": "text", "text": "Hello!"}]
    assert resp.json["model"] == "claude-test"
    sent = fake_upstream.last
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert CLIENT_KEY not in repr(sent.raw_headers) + sent.body.decode()


def test_streaming_round_trip(post, fake_upstream):
    fake_upstream.push(sse_reply(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}),
                                 chunk({}, "stop"), {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}))
    resp = post(minimal_request(stream=True))
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = events_of(resp.body)
    assert_valid_event_sequence(events, allow_error=False)
    message = final_message(events)
    assert message["content"] == [{"type": "text", "text": "Hi"}]
    assert message["usage"]["output_tokens"] == 1


def test_an_older_python_is_told_in_one_line() -> None:
    # Python 3.7 (Debian 10's) failed with a traceback about typing.Protocol; the version is checked
    # first. Simulated here (any interpreter): the check reads sys.version_info and, for
    # ``python -m``, sys.argv[0], which is "-m" while the package is imported.
    import subprocess
    import sys

    code = ("import sys; sys.version_info = (3, 7, 16, 'final', 0); sys.version = '3.7.16 (x)'; "
            "sys.argv[:] = ['-m']; import claudeproxy")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""  # as a setting the start cannot work with
    assert done.stderr == "claudeproxy: error: claudeproxy needs Python 3.8 or newer; this is Python 3.7.16\n"
    code = code.replace("sys.argv[:] = ['-m']; ", "")  # imported by another program: an ImportError
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.rstrip().endswith(
        "ImportError: claudeproxy needs Python 3.8 or newer; this is Python 3.7.16")
