"""The doors into the engine: the LiteLLM proxy hook, the LiteLLM Router strategy (and LangChain, later).

Shipped in the wheel as `echolm_middleware.integrations`; in a checkout LiteLLM also loads these files
by path as `integrations.*` next to config.yaml.
"""
