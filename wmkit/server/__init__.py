"""HTTP servers: OpenAI-compatible endpoints in front of wmkit (``wm serve-embeddings``)."""
