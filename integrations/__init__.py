"""What a LiteLLM config names from a checkout: `integrations.litellm_proxy.proxy_handler`.

LiteLLM loads a callback module by file path next to config.yaml. Each file here only re-exports a door
from `echolm_middleware.doors`, so however LiteLLM (or Python) loads it, every name reaches the one
class and the one instance defined there. From an installed wheel, name the door itself:
`echolm_middleware.doors.litellm_proxy.proxy_handler`.
"""
