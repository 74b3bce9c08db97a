"""LiteLLM's stream finalizer re-entering ContextVar.set inside the cyclic collector (CPython gh-148891).

    python hamt_finalizer_reproducer.py litellm|guarded ITERATIONS SHAPES [correlated]

It tries SHAPES shapes of the context in turn (8 to 20 variables, fresh names and so fresh hashes); in each,
every iteration abandons a LiteLLM stream in a reference cycle (as LiteLLM builds it with
request_correlation_in_logs off, its default: every correlation id ""; `correlated`: as with it on, the
stream's own ids those the context holds and the ids to restore new ones) and sets one of 16 context
variables, with the collector's threshold moved so that it fires on the 2nd to 5th object allocated by
that set: the token, then the nodes of the context's HAMT. The stream's `__del__` then sets LiteLLM's
correlation ids in the same context while `_PyHamt_Assoc` still walks the HAMT those sets replace. On
CPython 3.11 that use-after-free kills the process with SIGSEGV, for some hash seeds and heap layouts
(tests/unit/test_litellm_stream_finalizer.py runs it).
`guarded` first installs echolm's guard, which keeps the finalizer from setting anything inside the
collector. Prints
"survived N" on exit.
"""

import contextvars
import gc
import sys

from litellm._logging import session_id_var, trace_id_var
from litellm.litellm_core_utils.litellm_logging import Logging
from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper

mode, iterations, shapes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
correlated = sys.argv[4:] == ["correlated"]
if mode == "guarded":
    from echolm_middleware.doors.litellm_stream_finalizer import guard_stream_finalizer

    assert guard_stream_finalizer()


def abandon_a_stream(n: int) -> None:
    log = Logging.__new__(Logging)
    log._own_trace_id = log._own_session_id = log._pre_call_trace_id = log._pre_call_session_id = ""
    if correlated:  # what its finalizer restores differs from what the context holds: it sets both ids
        log._own_trace_id, log._own_session_id = trace_id_var.get(), session_id_var.get()
        log._pre_call_trace_id, log._pre_call_session_id = f"trace-{n}", f"session-{n}"
    stream = CustomStreamWrapper.__new__(CustomStreamWrapper)
    stream.logging_obj = log
    stream.cycle = stream  # only the cyclic collector frees it


def run(pads: list[contextvars.ContextVar[object]]) -> int:
    for var in pads:
        var.set(object())
    for n in range(iterations):
        gc.collect(0)
        abandon_a_stream(n)
        setter, value = pads[n % len(pads)].set, object()
        gc.set_threshold(gc.get_count()[0] + 1 + n % 4, 10, 10)
        setter(value)
    gc.set_threshold(700, 10, 10)
    return iterations


done = 0
for shape in range(shapes):
    pads = [contextvars.ContextVar(f"pad_{shape}_{i}") for i in range(8 + shape % 13)]
    done += contextvars.Context().run(run, pads)
print("survived", done, flush=True)
