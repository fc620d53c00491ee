"""OpenAI Chat Completions (``POST {base}/chat/completions``): PROTOCOL.md.

No I/O. ``request`` turns an Anthropic request into a Chat Completions body,
``response`` turns a JSON answer back, ``stream`` folds chunks into Anthropic
events, ``wire`` holds the Chat Completions shapes (named so that it cannot
shadow the standard library's ``types``).
"""
