"""The LangChain door, under the name a checkout's users look for."""

from echolm_middleware.doors.langchain_chat import EchoLMChatModel

__all__ = ["EchoLMChatModel"]
