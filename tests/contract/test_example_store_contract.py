"""ExampleStore contract, run against the in-memory store and the real Chroma store (`store` fixture)."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from echolm_lab.local_services import free_port, start_chroma
from echolm_middleware.backends.chroma_store import ChromaExampleStore, collection_name
from echolm_middleware.config import StoreSettings
from echolm_middleware.core.ports import ExampleStore
from echolm_middleware.core.types import Example
from echolm_middleware.errors import StoreUnavailable

X, Y, Z = [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]
CLOSE = 1e-5  # Chroma keeps float32 vectors


def _example(id_: str, **fields: object) -> Example:
    values: dict[str, object] = {"id": id_, "prompt": f"prompt {id_}", "answer": f"answer {id_}"}
    values |= {"source_tier": "strong", "quality": 0.8, "created_at": 1_700_000_000.5}
    values.update(fields)
    return Example(**values)  # type: ignore[arg-type]


def _unit(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def _cos(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(_unit(a), _unit(b), strict=True))


def _everything(store: ExampleStore, tenant: str) -> dict[str, Example]:
    return {c.example.id: c.example for c in store.nearest(tenant, X, 100)}


def test_an_empty_store_finds_nothing(store: ExampleStore) -> None:
    assert store.count("A") == 0
    assert store.nearest("A", X, 5) == []


def test_nearest_returns_cosine_similarity_best_first(store: ExampleStore) -> None:
    vectors = {
        "same": X,
        "close": [0.9, 0.1, 0.0, 0.0],
        "far": [0.2, 0.9, 0.1, 0.0],
        "opposite": [-1.0, 0, 0, 0],
    }
    store.upsert("A", [_example(name) for name in vectors], list(vectors.values()))

    found = store.nearest("A", X, 10)

    assert [c.example.id for c in found] == ["same", "close", "far", "opposite"]
    for candidate in found:
        assert candidate.similarity == pytest.approx(_cos(X, vectors[candidate.example.id]), abs=CLOSE)
    assert found[0].similarity == pytest.approx(1.0, abs=CLOSE)
    assert found[-1].similarity == pytest.approx(-1.0, abs=CLOSE)


def test_nearest_returns_at_most_n(store: ExampleStore) -> None:
    store.upsert("A", [_example("x"), _example("y"), _example("z")], [X, Y, Z])

    found = store.nearest("A", [1.0, 0.5, 0.1, 0.0], 2)

    assert [c.example.id for c in found] == ["x", "y"]


def test_similarity_ignores_vector_length(store: ExampleStore) -> None:
    store.upsert("A", [_example("long")], [[3.0, 4.0, 0.0, 0.0]])

    found = store.nearest("A", [0.6, 0.8, 0.0, 0.0], 1)[0]

    assert found.similarity == pytest.approx(1.0, abs=CLOSE)
    assert found.embedding is not None
    assert _cos(found.embedding, [3.0, 4.0, 0.0, 0.0]) == pytest.approx(1.0, abs=CLOSE)


def test_every_field_of_an_example_round_trips(store: ExampleStore) -> None:
    example = Example(
        id="e1",
        prompt="Wie heißt die Hauptstadt? 🇫🇷",
        answer='Paris — "la ville lumière"\nsecond line',
        source_tier="strong-v2",
        quality=0.375,
        created_at=1_700_000_123.25,
        uses=7,
        offload_successes=2.5,
        gain=0.125,
        replays=3,
        selected=9,
        value=4.5,
        value_at=1_700_000_200.5,
        instructions="Réponds en français.\nUne ligne.",
    )
    store.upsert("A", [example], [Y])

    found = store.nearest("A", Y, 1)

    assert [c.example for c in found] == [example]
    assert found[0].embedding == pytest.approx(Y, abs=CLOSE)


def test_tenants_never_see_each_other(store: ExampleStore) -> None:
    store.upsert("team-a", [_example("a1"), _example("a2")], [X, Y])
    store.upsert("team/β b", [_example("b1")], [X])

    assert store.count("team-a") == 2
    assert store.count("team/β b") == 1
    assert store.count("team-c") == 0
    assert set(_everything(store, "team-a")) == {"a1", "a2"}
    assert set(_everything(store, "team/β b")) == {"b1"}
    assert store.nearest("team-c", X, 10) == []


def test_the_same_id_in_two_tenants_is_two_examples(store: ExampleStore) -> None:
    store.upsert("A", [_example("e", answer="for A")], [X])
    store.upsert("B", [_example("e", answer="for B")], [X])
    store.modify("A", ["e"], lambda e: replace(e, quality=0.1))

    assert _everything(store, "A")["e"].answer == "for A"
    assert _everything(store, "A")["e"].quality == pytest.approx(0.1)
    assert _everything(store, "B")["e"].answer == "for B"
    assert _everything(store, "B")["e"].quality == pytest.approx(0.8)


def test_upserting_an_existing_id_replaces_it(store: ExampleStore) -> None:
    store.upsert("A", [_example("e", answer="old")], [X])

    store.upsert("A", [_example("e", answer="new")], [Y])

    assert store.count("A") == 1
    found = store.nearest("A", Y, 5)
    assert [(c.example.answer, round(c.similarity, 4)) for c in found] == [("new", 1.0)]


def test_add_never_replaces_an_example_the_tenant_holds(store: ExampleStore) -> None:
    assert store.add("A", [_example("e", answer="first", admitted_by="user:alice", origin="r1")], [X]) == 1

    assert store.add("A", [_example("e", answer="second"), _example("f"), _example("f", answer="dup")], [Y, Y, Y]) == 1

    held = _everything(store, "A")
    assert (held["e"].answer, held["e"].admitted_by, held["e"].origin) == ("first", "user:alice", "r1")
    assert held["f"].answer == "answer f"  # the first of an id within one batch
    assert store.nearest("A", X, 1)[0].example.id == "e"  # the first vector stays too
    assert store.add("B", [_example("e", answer="B's own")], [X]) == 1  # another tenant's id space


def test_nearest_with_a_context_sees_only_that_contexts_examples(store: ExampleStore) -> None:
    store.add("A", [_example("doc1", context="c1"), _example("doc2", context="c2"), _example("old")], [X, X, X])

    assert [c.example.id for c in store.nearest("A", X, 10, context="c1")] == ["doc1"]
    assert [c.example.id for c in store.nearest("A", X, 10, context="c2")] == ["doc2"]
    assert store.nearest("A", X, 10, context="c3") == []
    assert {c.example.id for c in store.nearest("A", X, 10)} == {"doc1", "doc2", "old"}  # no context: all
    assert _everything(store, "A")["doc1"].context == "c1"


def test_a_context_crowded_out_by_another_near_the_query_still_gets_its_own_nearest(store: ExampleStore) -> None:
    # Thirty examples of one context right at the query, three of another further off: the second's
    # nearest are not among the first few found without the filter, and must still come back, in order.
    crowd = [_example(f"c1-{i}", context="c1") for i in range(30)]
    crowd_vectors = [_unit([1.0, i / 1000, 0.0, 0.0]) for i in range(30)]
    others = [_example(f"c2-{i}", context="c2") for i in range(3)]
    other_vectors = [_unit([1.0, 0.5 + i / 10, 0.0, 0.0]) for i in range(3)]
    store.add("A", crowd + others, crowd_vectors + other_vectors)

    assert [c.example.id for c in store.nearest("A", X, 2, context="c2")] == ["c2-0", "c2-1"]
    assert [c.example.id for c in store.nearest("A", X, 3, context="c1")] == ["c1-0", "c1-1", "c1-2"]
    assert [c.example.id for c in store.nearest("A", X, 5, context="c2")] == ["c2-0", "c2-1", "c2-2"]


def test_contexts_interleaved_near_the_query_give_each_its_own_nearest_in_order(store: ExampleStore) -> None:
    # Nearest first, the contexts alternate: each one's nearest n are spread over the closest 2n.
    examples = [_example(f"e{i}", context="c1" if i % 2 == 0 else "c2") for i in range(12)]
    vectors = [_unit([1.0, i / 20, 0.0, 0.0]) for i in range(12)]
    store.add("A", examples, vectors)

    for context, expected in (("c1", ["e0", "e2", "e4", "e6"]), ("c2", ["e1", "e3", "e5", "e7"])):
        found = store.nearest("A", X, 4, context=context)
        assert [c.example.id for c in found] == expected
        assert [c.similarity for c in found] == sorted((c.similarity for c in found), reverse=True)
        assert all(c.example.context == context and c.embedding is not None and len(c.embedding) == 4 for c in found)


def test_upserts_larger_than_a_batch_store_everything(store: ExampleStore) -> None:
    examples = [_example(f"e{i}") for i in range(7)]
    vectors = [[1.0, i / 10, 0.0, 0.0] for i in range(7)]

    store.upsert("A", examples, vectors)

    assert store.count("A") == 7
    assert [c.example.id for c in store.nearest("A", X, 7)] == [f"e{i}" for i in range(7)]


def test_one_vector_per_example_is_required(store: ExampleStore) -> None:
    with pytest.raises(ValueError, match="one vector per example"):
        store.upsert("A", [_example("a"), _example("b")], [X])

    assert store.count("A") == 0


def test_modify_changes_the_listed_examples_and_ignores_unknown_ids(store: ExampleStore) -> None:
    store.upsert("A", [_example("a"), _example("b")], [X, Y])

    changed = store.modify("A", ["a", "missing", "a"], lambda e: replace(e, uses=e.uses + 1, gain=0.25))

    stored = _everything(store, "A")
    assert changed == 1
    assert (stored["a"].uses, stored["a"].gain) == (1, pytest.approx(0.25))
    assert stored["b"] == _example("b")
    assert store.count("A") == 2


def test_modify_can_replace_an_answer_but_not_an_id_or_prompt(store: ExampleStore) -> None:
    store.upsert("A", [_example("a")], [X])

    store.modify("A", ["a"], lambda e: replace(e, answer="a better answer", source_tier="strong", replays=1))
    with pytest.raises(ValueError, match="not its id or prompt"):
        store.modify("A", ["a"], lambda e: replace(e, prompt="another question"))

    stored = _everything(store, "A")["a"]
    assert (stored.answer, stored.replays, stored.prompt) == ("a better answer", 1, "prompt a")
    assert store.nearest("A", X, 1)[0].similarity == pytest.approx(1.0, abs=CLOSE)  # the vector is kept


def test_examples_lists_every_example_of_one_tenant(store: ExampleStore) -> None:
    many = [_example(f"e{n:03d}") for n in range(150)]
    store.upsert("A", many, [X] * len(many))
    store.upsert("B", [_example("other")], [Y])

    assert sorted(e.id for e in store.examples("A")) == [e.id for e in many]
    assert store.examples("nobody") == []


def test_a_whole_tenant_scan_lets_admissions_through_between_its_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upkeep scans whole tenants; an admission on the request path waits at most one page, not the scan."""
    import threading

    from echolm_middleware.backends import chroma_store as module

    store = ChromaExampleStore(StoreSettings(path=tmp_path / "chroma", batch_size=2))  # pages of 32
    many = [_example(f"e{n:03d}") for n in range(100)]
    store.upsert("A", many, [X] * len(many))
    between_pages, admitted = threading.Event(), threading.Event()
    to_example = module._to_example

    def slow_reader(*args: object) -> Example:
        between_pages.set()
        admitted.wait(10)  # the scan reads its first page's rows while the admission runs
        return to_example(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "_to_example", slow_reader)
    scanned: list[Example] = []
    scan = threading.Thread(target=lambda: scanned.extend(store.examples("A")))
    scan.start()
    assert between_pages.wait(10)
    started = time.monotonic()
    store.add("A", [_example("new")], [Y])  # blocks until the scan ends if the scan holds the lock
    took = time.monotonic() - started
    admitted.set()
    scan.join(30)

    assert took < 5
    assert {e.id for e in many} <= {e.id for e in scanned}  # every example there before the scan, once
    assert len(scanned) == len({e.id for e in scanned})


def test_the_embedded_chroma_is_entered_by_one_thread_at_a_time_reads_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chromadb's Rust core runs in our process when embedded, and its bindings have open reports of SIGSEGV
    under concurrent calls (a bench proxy died so with a query in flight): queries, reads, counts and writes
    from many threads never overlap inside it."""
    import threading

    from chromadb.api.models.Collection import Collection

    store = ChromaExampleStore(StoreSettings(path=tmp_path / "chroma"))
    store.upsert("A", [_example(f"e{n}") for n in range(50)], [_unit([1.0, n / 50, 0.0, 0.0]) for n in range(50)])
    inside, most, guard = [0], [0], threading.Lock()

    def counted(method: str) -> None:
        original = getattr(Collection, method)

        def call(self: Collection, *args: object, **kwargs: object) -> object:
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            try:
                time.sleep(0.002)  # long enough that unguarded calls from 10 threads would overlap
                return original(self, *args, **kwargs)
            finally:
                with guard:
                    inside[0] -= 1

        monkeypatch.setattr(Collection, method, call)

    for method in ("query", "get", "count", "upsert", "add", "update"):
        counted(method)

    def reader() -> None:
        for _ in range(20):
            store.nearest("A", X, 5, context="")
            store.count("A")

    def writer(k: int) -> None:
        for n in range(10):
            store.upsert("A", [_example(f"w{k}-{n}")], [Y])
            store.modify("A", [f"e{n}"], lambda e: replace(e, uses=e.uses + 1))

    threads = [threading.Thread(target=reader) for _ in range(8)] + [
        threading.Thread(target=writer, args=(k,)) for k in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert most[0] == 1
    assert store.count("A") == 70 and store.nearest("A", Y, 1)[0].example.id.startswith("w")


def test_delete_removes_only_the_listed_examples(store: ExampleStore) -> None:
    store.upsert("A", [_example("a"), _example("b")], [X, Y])
    store.upsert("B", [_example("a")], [X])

    store.delete("A", ["a", "missing"])
    store.delete("nobody", ["a"])

    assert set(_everything(store, "A")) == {"b"}
    assert set(_everything(store, "B")) == {"a"}


def test_tenants_lists_those_holding_examples(store: ExampleStore) -> None:
    store.upsert("team:acme", [_example("a")], [X])
    store.upsert("user:bob@example.com", [_example("a")], [X])

    assert store.tenants() == ["team:acme", "user:bob@example.com"]


def test_updates_for_a_tenant_with_no_examples_are_ignored(store: ExampleStore) -> None:
    assert store.modify("nobody", ["a"], lambda e: replace(e, quality=0.0)) == 0

    assert store.count("nobody") == 0


# ---- Chroma only: persistence and error translation -------------------------------------------


def _chroma(path: Path) -> ChromaExampleStore:
    return ChromaExampleStore(StoreSettings(backend="chroma", path=path, collection_prefix="test"))


def test_chroma_examples_survive_a_new_store_on_the_same_directory(tmp_path: Path) -> None:
    first = _chroma(tmp_path / "chroma")
    first.upsert("A", [_example("a")], [X])
    first.modify("A", ["a"], lambda e: replace(e, uses=2, offload_successes=1.0, gain=0.3, value=1.0, value_at=5.0))

    reopened = _chroma(tmp_path / "chroma")

    assert reopened.count("A") == 1
    stored = reopened.nearest("A", X, 1)[0].example
    assert (stored.uses, stored.offload_successes, stored.gain, stored.value, stored.value_at) == (
        2,
        1.0,
        0.3,
        1.0,
        5.0,
    )


def test_chroma_failures_surface_as_store_unavailable(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("in the way", encoding="utf-8")
    broken = _chroma(not_a_directory)

    with pytest.raises(StoreUnavailable, match="chroma query failed") as raised:
        broken.nearest("A", X, 1)
    assert raised.value.__cause__ is not None
    with pytest.raises(StoreUnavailable, match="chroma upsert failed"):
        broken.upsert("A", [_example("a")], [X])


def test_chroma_collection_names_are_valid_for_any_tenant() -> None:
    names = {collection_name("echolm", tenant) for tenant in ["a", "A", "team/β b", "", "x" * 500]}

    assert len(names) == 5
    assert all(3 <= len(name) <= 63 and name.replace("-", "").isalnum() for name in names)


def test_a_chroma_server_that_stops_answering_fails_calls_within_the_budget_and_is_used_again(
    tmp_path: Path,
) -> None:
    """A stopped process accepts connections and never answers, like a server wedged after a failed write
    (Chroma 1.x hung so after a disk-full upsert); chromadb alone would wait forever."""
    server = start_chroma(free_port(), tmp_path / "server")
    try:
        settings = StoreSettings(server_url=server.url, collection_prefix="test", server_timeout_s=1.0)
        store = ChromaExampleStore(settings)
        store.upsert("A", [_example("a")], [X])
        server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="chroma query failed"):
                store.nearest("A", X, 1)
            with pytest.raises(StoreUnavailable, match="did not answer"):
                ChromaExampleStore(settings).count("A")  # a new connection: the heartbeat is bounded too
            assert time.monotonic() - started < 10
        finally:
            server.process.send_signal(signal.SIGCONT)

        assert [c.example.id for c in store.nearest("A", X, 1)] == ["a"]  # reconnected, no restart
    finally:
        server.stop()
