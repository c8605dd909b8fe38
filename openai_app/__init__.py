"""OpenAI-compatible completions and chat completions (``/oai/api/v1/``) over TuFT's sampling path."""
