"""echolm-middleware: in-context caching for LLM serving (EchoLM, arXiv 2501.12689)."""

__version__ = "0.1.0"
