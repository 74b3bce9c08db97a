"""The LiteLLM proxy door, as config.yaml names it from a checkout (`integrations.litellm_proxy.proxy_handler`)."""

from echolm_middleware.doors.litellm_proxy import EchoLMProxyHandler, proxy_handler

__all__ = ["EchoLMProxyHandler", "proxy_handler"]
