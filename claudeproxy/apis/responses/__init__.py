"""OpenAI Responses (``POST {base}/responses``): RESPONSES.md.

No I/O. ``request`` turns an Anthropic request into a stateless Responses
body (``store: false``, the whole history as ``input`` items, reasoning
replayed from thinking-block signatures), ``response`` turns a JSON Response
object back into an Anthropic message, ``stream`` folds the Responses event
stream into Anthropic events (``ResponsesFold``).
"""

# The name in the signatures of thinking blocks made from Responses reasoning items.
API_NAME = "responses"
