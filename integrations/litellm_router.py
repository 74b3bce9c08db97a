"""The LiteLLM Router door, under the name a checkout's users look for."""

from echolm_middleware.doors.litellm_router import EchoLMRouterDoor, EchoLMRoutingStrategy, install_echolm

__all__ = ["EchoLMRouterDoor", "EchoLMRoutingStrategy", "install_echolm"]
