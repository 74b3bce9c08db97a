"""A LiteLLM logging callback for a test's proxy: appends each call's StandardLoggingPayload, as LiteLLM
built it, to the JSON-lines file named by ECHOLM_TEST_PAYLOAD_LOG. Copied beside the proxy's config."""

from __future__ import annotations

import json
import os
from typing import Any

from litellm.integrations.custom_logger import CustomLogger


class PayloadLog(CustomLogger):
    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        payload = kwargs.get("standard_logging_object")
        with open(os.environ["ECHOLM_TEST_PAYLOAD_LOG"], "a", encoding="utf-8") as log:
            log.write(json.dumps(payload, default=str) + "\n")


payload_log = PayloadLog()
