"""The doors into the engine: the LiteLLM proxy hook, the LiteLLM Router strategy and the LangChain chat model.

Each door only turns its host's request into a `ChatRequest`, calls the engine through `access`, and
hands the outcome back; the engine owns the request's life (load accounting, the decision summary).
"""
