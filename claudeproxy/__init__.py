# claudeproxy - Anthropic Messages API in front of any OpenAI-compatible backend.
# Copyright (c) 2026 the claudeproxy authors. MIT License: permission is hereby granted,
# free of charge, to any person obtaining a copy of this software, to deal in it without
# restriction, provided this notice is kept; it is provided "as is", without warranty.
"""claudeproxy: lets Anthropic API clients (Claude Code, the SDKs) use OpenAI-compatible backends.

Standard library only; every import inside the package is relative, and
importing it does nothing but define names, so it can be copied into another
project as it is. ``start()`` runs a server in the background for library use;
``python -m claudeproxy`` runs one from the command line.

A request's way through the package, one module a step:

1. ``server`` listens (``ThreadingHTTPServer``); ``handler`` reads the request, checks the key,
   Host and path, and ``door`` decodes the body and refuses what would break a later step (not
   JSON, NaN, lone surrogates, nesting too deep).
2. ``pipeline.Proxy.messages`` joins the steps: ``anthropic_types.peek_request`` reads the model,
   ``routing.Router`` picks the provider, API and upstream model (``dialects`` holds every
   provider quirk), and the API's ``parse`` and ``prepare`` (``apis/base.UpstreamApi``) turn the
   body into the upstream request: ``apis/chat/request.py`` or ``apis/responses/request.py``,
   or ``apis/messages.py``, which forwards it.
3. ``upstream.Upstream.open`` sends it through ``urllib.request`` on a pooled connection.
4. The answer comes back through the same API: whole, ``from_json`` (``apis/*/response.py``);
   streamed, ``relay.Relay`` feeds each chunk to the API's fold (``apis/*/stream.py``) and
   writes its events as they come, ``ending`` deciding how a stream ends for every API.
5. ``handler.ResponseWriter`` writes the answer (``sides`` names what the pipeline asks of it); ``pipeline`` files the call record (``spend``
   adds up what its attempts spent, ``cost`` prices it) in ``metrics`` and the access line,
   where ``/metrics``, ``/v1/usage`` and the usage page (``prometheus``, ``usage_page``) read it.

Around it: ``cli`` and ``config_file`` turn flags, a config file and the environment into the
frozen ``config.Config``; ``launcher`` (``claudeproxy run``) starts a proxy for one command;
``credentials`` fetches upstream keys; ``redact`` masks secrets in everything logged or relayed;
``watchdog`` ends calls whose client left or whose deadline passed, and pings held streams.
Comments cite the design notes the project was built from (PROTOCOL.md, RESPONSES.md,
RELIABILITY.md, FIELD-NOTES) by section; they are not part of the package or the repository.
"""

import sys as _sys

if _sys.version_info < (3, 8):  # the modules are 3.8's (typing.Protocol...): one line, not a traceback
    _TOO_OLD = f"claudeproxy needs Python 3.8 or newer; this is Python {_sys.version.split()[0]}"
    if _sys.argv[:1] == ["-m"]:  # python -m claudeproxy, while the package is imported
        _sys.stderr.write(f"claudeproxy: error: {_TOO_OLD}\n")
        raise SystemExit(2)  # the status of every other setting the start cannot work with
    raise ImportError(_TOO_OLD)

try:
    from .config import Config, static_token  # noqa: E402  (after the version check)
    from .credentials import command_token  # noqa: E402
    from .server import RunningServer, start  # noqa: E402
    from .version import __version__  # noqa: E402
except KeyboardInterrupt:
    import os as _os

    # python -m claudeproxy (argv[0] is "-m" while the package loads), the installed command, the zipapp
    _PROGRAM = _os.path.basename(_sys.argv[0]) if _sys.argv else ""
    if _sys.argv[:1] != ["-m"] and _PROGRAM.split(".")[0] != "claudeproxy":
        raise  # a program importing the package decides what its Ctrl-C means
    # Ctrl-C while the proxy's own process loads (its first tenth of a second): stopped, as after it,
    # with the shell's status for an interrupt and no traceback.
    raise SystemExit(130) from None

__all__ = ["Config", "RunningServer", "__version__", "command_token", "start", "static_token"]
