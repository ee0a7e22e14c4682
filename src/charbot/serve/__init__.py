"""`charbot serve`: the engine over HTTP, an OpenAI-compatible API and a page (see docs/serve.md)."""
