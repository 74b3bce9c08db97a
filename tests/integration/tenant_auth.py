"""A LiteLLM `custom_auth` for tests: two API keys, each authenticated as its own team.

The proxy loads it next to the test's config file; the tenant then comes from the authenticated team.
Both teams may ask for LiteLLM's `mock_response` (LiteLLM 1.108 strips it from a request unless the
key's or team's metadata allows it), so a test can drive our hook many times without inference.
"""

from __future__ import annotations

from fastapi import Request
from litellm.proxy._types import UserAPIKeyAuth

TEAMS = {"sk-tenant-a": "team-a", "sk-tenant-b": "team-b"}


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    key = api_key.removeprefix("Bearer ").strip()
    if key not in TEAMS:
        raise Exception("invalid api key")
    return UserAPIKeyAuth(api_key=key, team_id=TEAMS[key], metadata={"allow_client_mock_response": True})
