"""A LiteLLM `custom_auth` for tests: teammates (two users of one team) and a user of another team.

The proxy loads it next to the test's config file; the tenant is then the authenticated team, and the
user is who admitted an example. A key may carry a model allow-list, as LiteLLM virtual keys do.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from litellm.proxy._types import UserAPIKeyAuth

KEYS: dict[str, dict[str, Any]] = {
    "sk-alice": {"team_id": "team-a", "user_id": "alice"},
    "sk-bob": {"team_id": "team-a", "user_id": "bob"},
    "sk-carol": {"team_id": "team-b", "user_id": "carol"},
    "sk-dave": {"team_id": "team-a", "user_id": "dave", "models": ["strong"]},  # may call only strong
}


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    key = api_key.removeprefix("Bearer ").strip()
    if key not in KEYS:
        raise Exception("invalid api key")
    return UserAPIKeyAuth(api_key=key, **KEYS[key])
