"""Keep LiteLLM's stream finalizer from writing context variables that it would leave unchanged.

LiteLLM (1.100 to at least 1.110) gives `CustomStreamWrapper` a `__del__` that restores the request's
correlation ids (`trace_id_var`, `session_id_var`) through `Logging._restore_correlation_context_if_unclaimed`.
Streams sit in reference cycles, so the cyclic collector runs that finalizer inside whatever allocation
triggered it. On CPython 3.10 and 3.11, if that allocation is a node of the context's HAMT inside another
`ContextVar.set` of the same context, the finalizer's own `set` replaces and frees the HAMT still being
walked: a use-after-free that kills the process with SIGSEGV (CPython gh-148891, open; 3.12 and later run
the collector between bytecodes, where it cannot land inside that walk). A proxy under load met it in the event loop's `ContextVar.set` under LiteLLM's auth
(benchmarks/results/tables-nq_open-1000-fixed-1.0x-2026-12-05/proxy-sigsegv.txt).

With `litellm.request_correlation_in_logs` off, LiteLLM's default, both ids before and after the call are
"" and the restore writes "" over "": it changes nothing and only opens the window for the crash. The
guard skips a restore whose values equal the call's own (nothing to restore) and keeps every other one.
Installed by the LiteLLM doors at import, on Python before 3.12 only; where LiteLLM lacks the method, or
names its fields otherwise, it leaves LiteLLM as it is.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_METHOD = "_restore_correlation_context_if_unclaimed"
_MARK = "__echolm_guarded__"


def restore_changes_nothing(logging_obj: Any) -> bool:
    """True when the restore would set each id to the value this call itself left in it."""
    try:
        return bool(
            logging_obj._pre_call_trace_id == logging_obj._own_trace_id
            and logging_obj._pre_call_session_id == logging_obj._own_session_id
        )
    except AttributeError:  # another LiteLLM's fields: let its own method decide
        return False


def guard_stream_finalizer(*, python: tuple[int, int] = sys.version_info[:2]) -> bool:
    """Install the guard on LiteLLM's `Logging`; True when it is in place (now or already)."""
    if python >= (3, 12):
        return False
    try:
        from litellm.litellm_core_utils.litellm_logging import Logging
    except Exception:  # a LiteLLM without that module has no such finalizer to guard
        return False
    original: Callable[[Any], None] | None = getattr(Logging, _METHOD, None)
    if original is None:
        return False
    if getattr(original, _MARK, False):
        return True

    @functools.wraps(original)
    def restore_if_it_changes_something(self: Any) -> None:
        if restore_changes_nothing(self):
            return
        original(self)

    setattr(restore_if_it_changes_something, _MARK, True)
    setattr(Logging, _METHOD, restore_if_it_changes_something)
    log.debug("LiteLLM's stream finalizer skips restores that change nothing (CPython gh-148891)")
    return True
