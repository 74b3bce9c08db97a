"""Keep LiteLLM's stream finalizer from setting context variables inside the cyclic collector.

LiteLLM (1.100 to at least 1.110) gives `CustomStreamWrapper` a `__del__` that restores the request's
correlation ids (`trace_id_var`, `session_id_var`) through `Logging._restore_correlation_context_if_unclaimed`.
Streams sit in reference cycles, so the cyclic collector runs that finalizer inside whatever allocation
triggered it. On CPython 3.10 and 3.11, if that allocation is a node of the context's HAMT inside another
`ContextVar.set` of the same context, the finalizer's own `set` replaces and frees the HAMT still being
walked: a use-after-free that kills the process with SIGSEGV (CPython gh-148891, open; 3.12 and later run
the collector between bytecodes, where it cannot land inside that walk). A proxy under load met it in the
event loop's `ContextVar.set` under LiteLLM's auth
(benchmarks/results/tables-nq_open-1000-fixed-1.0x-2026-12-05/proxy-sigsegv.txt).

The guard skips that restore
- when it would change nothing: with `litellm.request_correlation_in_logs` off, LiteLLM's default, the ids
  before and after the call are both "" and the restore writes "" over "";
- when it runs inside the cyclic collector, whatever the ids (told by `gc.callbacks`, per thread). With
  correlation on, the ids this abandoned stream stamped then stay in its Task's context until that Task's
  next call sets its own: LiteLLM calls this restore best effort, for streams nobody finished or closed.
A restore outside the collector that changes an id runs as LiteLLM wrote it. Installed by the LiteLLM doors
at import, on Python before 3.12 only; where LiteLLM lacks the method it leaves LiteLLM as it is.
"""

from __future__ import annotations

import functools
import gc
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_METHOD = "_restore_correlation_context_if_unclaimed"
_MARK = "__echolm_guarded__"


class CollectorWatch:
    """Whether this thread is inside a run of the cyclic collector: a `gc.callbacks` entry."""

    def __init__(self) -> None:
        self._threads = threading.local()

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        self._threads.inside = phase == "start"

    @property
    def inside(self) -> bool:
        return bool(getattr(self._threads, "inside", False))


COLLECTOR = CollectorWatch()


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
    def restore_outside_the_collector(self: Any) -> None:
        if COLLECTOR.inside or restore_changes_nothing(self):
            return
        original(self)

    setattr(restore_outside_the_collector, _MARK, True)
    if COLLECTOR not in gc.callbacks:
        gc.callbacks.append(COLLECTOR)
    setattr(Logging, _METHOD, restore_outside_the_collector)
    log.debug("LiteLLM's stream finalizer sets no context variable inside the collector (CPython gh-148891)")
    return True
