"""Our parts never stall a request: bounded pools that fail open when full, a hung state database, a
store that is down when the engine is built."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from echolm_middleware.core.types import ChatRequest, Outcome
from echolm_middleware.doors.access import EngineHandle, FailOpenCounter, arecord_or_count, prepare_or_fail_open
from echolm_middleware.doors.bounded_threads import PREPARE, WRITES, BoundedThreads, Saturated
from tests.unit.conftest import EngineFactory

QUESTION = "What is the capital of France?"


def test_a_full_pool_refuses_at_once_and_takes_work_again_once_its_tasks_end() -> None:
    pool = BoundedThreads("test", threads=1, queued=1)
    gate = threading.Event()
    running = [pool.submit(gate.wait, 5), pool.submit(gate.wait, 5)]  # one runs, one waits in the queue

    started = time.monotonic()
    with pytest.raises(Saturated, match="test threads are all busy"):
        pool.submit(print, "never")
    assert time.monotonic() - started < 0.1  # refused, not queued

    assert pool.in_use() == 2
    gate.set()
    assert all(future.result(5) for future in running)
    assert pool.submit(lambda: 42).result(5) == 42
    assert pool.in_use() == 0


def test_a_task_cancelled_in_the_queue_gives_its_slot_back() -> None:
    pool = BoundedThreads("test", threads=1, queued=1)
    gate = threading.Event()
    first, queued = pool.submit(gate.wait, 5), pool.submit(gate.wait, 5)
    assert queued.cancel()
    assert pool.submit(lambda: "taken").cancel() is True  # the cancelled task's slot was free again
    gate.set()
    assert first.result(5)


def _hang_records(engine: Any) -> threading.Event:
    """Make every record of `engine` hang until the returned gate opens (a store that stopped answering)."""
    gate = threading.Event()
    record = engine.record

    def hung_record(outcome: Outcome) -> Any:
        gate.wait(30)
        return record(outcome)

    engine.record = hung_record
    return gate


class HungDecisions:
    """A state database that hangs on every write until `gate` opens (a stuck NFS file, a held lock)."""

    def __init__(self, real: Any, gate: threading.Event) -> None:
        self._real, self._gate = real, gate

    def put(self, decision: Any) -> None:
        self._gate.wait(30)
        self._real.put(decision)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_with_a_hung_state_database_every_request_is_answered_within_its_budget(make_engine: EngineFactory) -> None:
    """More requests than our threads and queue hold, on a loop whose default executor is itself hung."""
    engine = make_engine().engine
    gate = threading.Event()
    engine.decisions = HungDecisions(engine.decisions, gate)  # type: ignore[assignment]
    handle, counter = EngineHandle(lambda: engine), FailOpenCounter()
    handle.start().result()
    budget_s = 0.2
    requests = PREPARE.capacity + 40

    async def burst() -> tuple[list[Any], float]:
        hung_default = ThreadPoolExecutor(1)
        hung_default.submit(gate.wait, 30)  # LiteLLM's or the app's work stuck on the shared executor
        asyncio.get_running_loop().set_default_executor(hung_default)
        started = time.monotonic()
        decided = await asyncio.gather(
            *(
                prepare_or_fail_open(handle, counter, budget_s, ChatRequest("A", "strong", [{"role": "user", "content": f"{QUESTION} {n}"}]))
                for n in range(requests)
            )
        )  # fmt: skip
        took = time.monotonic() - started
        gate.set()  # before the loop closes: asyncio.run waits for its default executor's threads
        return [prepared for prepared, _ in decided], took

    try:
        prepared, took = asyncio.run(burst())
    finally:
        gate.set()

    assert took < budget_s + 1.0  # all of them, together: none queued behind the hung ones
    assert all(p is not None and p.decision.action == "fail_open" and p.tier == "strong" for p in prepared)
    assert counter.counts["timeout"] >= 1  # the first ones waited their budget on a hung thread ...
    assert counter.counts["saturated"] >= 40  # ... the rest were refused at once by the full pool


def test_records_past_the_write_queue_are_dropped_and_counted_while_the_loop_stays_free(
    make_engine: EngineFactory,
) -> None:
    engine = make_engine().engine
    gate = _hang_records(engine)
    counter = FailOpenCounter()
    deadline = time.monotonic() + 10
    while WRITES.in_use() and time.monotonic() < deadline:  # what earlier tests left to write
        time.sleep(0.01)

    async def flood() -> float:
        outcome = Outcome(request_id="r", served_by="strong", answer="Paris.", finish_reason="stop")
        waiting = [asyncio.create_task(arecord_or_count(engine, outcome, counter)) for _ in range(WRITES.capacity + 5)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await asyncio.sleep(0.01)  # the loop itself still runs at once
        lag = time.monotonic() - started
        gate.set()
        await asyncio.wait_for(asyncio.gather(*waiting), 30)
        return lag

    try:
        lag = asyncio.run(flood())
    finally:
        gate.set()

    assert lag < 0.1
    assert counter.counts["record: saturated"] == 5


def test_while_the_engine_cannot_be_built_every_request_fails_open_within_its_budget() -> None:
    """A Chroma server that is down at start: each build attempt takes long (connection timeouts) and fails;
    requests meanwhile wait at most their budget, and do not each start a build of their own."""
    builds: list[float] = []

    def build() -> Any:
        builds.append(time.monotonic())
        time.sleep(1.0)
        raise ConnectionError("Could not connect to a Chroma server")

    handle, counter = EngineHandle(build), FailOpenCounter()
    budget_s = 0.1
    request = ChatRequest("A", "strong", [{"role": "user", "content": QUESTION}])

    async def one_after_another() -> list[float]:
        took = []
        for _ in range(12):
            started = time.monotonic()
            prepared, engine = await prepare_or_fail_open(handle, counter, budget_s, request)
            took.append(time.monotonic() - started)
            assert prepared is None and engine is None  # the request goes out as asked
        return took

    took = asyncio.run(one_after_another())

    assert max(took) < budget_s + 0.1
    assert len(builds) <= 2  # one build at a time: 12 requests in about 1.2 s saw at most two attempts
    assert sum(counter.counts.values()) == 12


def test_a_request_that_stops_waiting_for_the_engine_does_not_cancel_its_build() -> None:
    """The first requests after start wait at most their budget for the engine; the build goes on for the
    requests after them (a waiter's timeout once cancelled it, and every request failed open for good)."""

    def build() -> Any:
        time.sleep(0.5)
        return "the engine"

    handle = EngineHandle(build)  # type: ignore[arg-type]

    async def two_requests() -> tuple[str, Any]:
        with pytest.raises(TimeoutError):
            await handle.get(0.1)  # the budget runs out while the engine is still being built
        await asyncio.sleep(0.8)
        return await handle.get(0.1), handle.ready()

    assert asyncio.run(two_requests()) == ("the engine", "the engine")


def test_a_200k_character_prompt_is_decided_and_recorded_at_once_and_kept_cut_not_cached(
    make_engine: EngineFactory,
) -> None:
    from echolm_middleware.config import AdmissionSettings
    from tests.unit.conftest import ADMISSION

    kit = make_engine(admission=ADMISSION.model_copy(update={"pii": "scrub"}))
    assert isinstance(kit.engine.settings.admission, AdmissionSettings)
    document = ("Contact jane.doe@example.com or +44 20 7946 0958 about invoice 4111 1111 1111 1111. " * 2400)[:200_000]
    messages = [{"role": "system", "content": document}, {"role": "user", "content": f"{QUESTION} {document}"}]

    started = time.monotonic()
    prepared = kit.engine.prepare(ChatRequest("A", "strong", messages))
    kit.engine.record(Outcome(prepared.decision.request_id, "strong", "Paris.", finish_reason="stop"))
    took = time.monotonic() - started

    assert took < 1.0
    kept = kit.state.get(prepared.decision.request_id)
    assert kept is not None and kept.not_cached == "prompt longer than requests.max_kept_chars: not kept whole"
    assert len(kept.query) == len(kept.instructions) == kit.engine.settings.requests.max_kept_chars
    assert not any(digit in kept.query + kept.instructions for digit in "0123456789")  # scrubbed, then cut
    assert kit.store.count("A") == 0  # an example needs its whole context


def test_a_bypassed_request_on_a_hung_state_database_goes_out_within_its_budget(make_engine: EngineFactory) -> None:
    from types import SimpleNamespace

    from echolm_middleware.doors.litellm_proxy import EchoLMProxyHandler

    engine = make_engine().engine
    gate = threading.Event()
    engine.decisions = HungDecisions(engine.decisions, gate)  # type: ignore[assignment]
    handler = EchoLMProxyHandler(handle=EngineHandle(lambda: engine), timeout_s=0.2)
    handler.handle.start().result()
    messages = [{"role": "user", "content": QUESTION}]
    data: dict[str, Any] = {"model": "strong", "messages": messages, "metadata": {"echolm_bypass": "true"}}

    started = time.monotonic()
    try:
        asyncio.run(handler.async_pre_call_hook(SimpleNamespace(team_id="A"), None, data, "acompletion"))
        took = time.monotonic() - started
    finally:
        gate.set()

    assert took < 0.2 + 0.5
    assert data["model"] == "strong" and data["messages"] == messages
    assert handler.fail_open.counts["bypass: could not keep the decision"] == 1


def test_after_a_failed_build_a_proxy_request_waits_only_its_budget_not_the_start_up_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is down at start: the first build fails; requests after it must not each wait the 30 s
    start-up wait for a retried build, but `requests.timeout_ms`."""
    from types import SimpleNamespace

    from echolm_middleware.doors.litellm_proxy import EchoLMProxyHandler

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "config.yaml").read_text())
    raw["echolm"].setdefault("requests", {})["timeout_ms"] = 300
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("ECHOLM_CONFIG", str(config))

    def build() -> Any:
        time.sleep(2.0)  # connection timeouts against a store that is not there
        raise ConnectionError("Could not connect to a Chroma server")

    handler = EchoLMProxyHandler(handle=EngineHandle(build), startup_wait_s=30.0)

    async def requests() -> list[float]:
        took = []
        for _ in range(3):
            data: dict[str, Any] = {"model": "strong", "messages": [{"role": "user", "content": QUESTION}]}
            started = time.monotonic()
            await handler.async_pre_call_hook(SimpleNamespace(team_id="A"), None, data, "acompletion")
            took.append(time.monotonic() - started)
            assert data["model"] == "strong"  # failed open: the request goes as asked
        return took

    first, *later = asyncio.run(requests())

    assert 1.5 < first < 3.0  # the first waited for the first build, which failed
    assert all(t < 0.3 + 0.3 for t in later), later


@pytest.mark.parametrize("path", ["invoke", "ainvoke"])
def test_a_langchain_call_on_a_hung_store_returns_its_answer_within_its_budget(
    make_engine: EngineFactory, path: str
) -> None:
    """The LangChain door waits for its record (so the next call finds the example), but only its budget."""
    from echolm_middleware.config import RequestSettings
    from echolm_middleware.doors.langchain_chat import EchoLMChatModel
    from tests.unit.test_langchain_door import ANSWER, ScriptedTier

    engine = make_engine(requests=RequestSettings(timeout_ms=200)).engine
    gate = _hang_records(engine)
    model = EchoLMChatModel(
        tenant="default", tiers=[ScriptedTier(answer="cheap"), ScriptedTier(answer=ANSWER)], engine=engine
    )

    started = time.monotonic()
    try:
        reply = model.invoke(QUESTION) if path == "invoke" else asyncio.run(model.ainvoke(QUESTION))
        took = time.monotonic() - started
    finally:
        gate.set()

    assert reply.content == ANSWER
    assert took < 0.2 + 0.5
    assert model.fail_open_counts["record: timeout (left running)"] == 1


def test_work_submitted_while_the_interpreter_shuts_down_is_refused_as_saturated() -> None:
    """LiteLLM's logging tasks may still record as a proxy exits: counted as saturation, not a traceback."""
    pool = BoundedThreads("test", threads=1, queued=1)
    pool._executor.shutdown()  # what the interpreter does to every executor at exit

    with pytest.raises(Saturated, match="shut down"):
        pool.submit(print, "never")
    assert pool.in_use() == 0
