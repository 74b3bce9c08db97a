"""The EchoLM core: pure decisions and the engine; imports no framework (a test enforces it)."""
