"""OpenAI Chat Completions (``POST {base}/chat/completions``): PROTOCOL.md. Pure.

``request`` turns an Anthropic request into a Chat Completions body,
``response`` turns a JSON answer back, ``stream`` folds chunks into Anthropic
events, ``wire`` holds the Chat Completions shapes (named so that it cannot
shadow the standard library's ``types``), ``api`` is the face the pipeline
sees (``apis/base.py``).
"""
