"""Team keys for a proxy without LiteLLM's key database: a `custom_auth` over ECHOLM_STATIC_KEYS.

    general_settings:
      master_key: os.environ/LITELLM_MASTER_KEY
      custom_auth: echolm_middleware.doors.static_keys.user_api_key_auth

    ECHOLM_STATIC_KEYS="sk-acme-1=acme,sk-beta-1=beta" echolm proxy

Each listed key authenticates as its team, which is the request's tenant; the master key stays the
proxy admin's (no tenant: its requests pass through unless `tenancy.shared`); any other key is
refused. With LiteLLM's database, its virtual keys and teams do this job instead (README "Security
model"). Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
import sys

from fastapi import Request
from litellm.proxy._types import LitellmUserRoles, ProxyException, UserAPIKeyAuth

from echolm_middleware.config import static_keys_from_env
from echolm_middleware.doors.litellm_common import PROXY_ADMIN_USER


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    key = api_key.removeprefix("Bearer ").strip()
    master = getattr(sys.modules.get("litellm.proxy.proxy_server"), "master_key", None)
    if isinstance(master, str) and master and hmac.compare_digest(key.encode(), master.encode()):
        return UserAPIKeyAuth(api_key=key, user_role=LitellmUserRoles.PROXY_ADMIN, user_id=PROXY_ADMIN_USER)
    team = None
    for listed, listed_team in static_keys_from_env().items():
        if hmac.compare_digest(key.encode(), listed.encode()):
            team = listed_team
    if team is None:
        raise ProxyException(message="invalid API key", type="auth_error", param="api_key", code=401)
    return UserAPIKeyAuth(api_key=key, team_id=team, user_role=LitellmUserRoles.INTERNAL_USER)
