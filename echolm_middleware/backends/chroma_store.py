"""The Chroma example store: one cosine collection per tenant, embedded on disk or on a `chroma run` server.

Partitioning by collection, not by a metadata filter, keeps tenant isolation a hard boundary and queries
fast (DESIGN.md §4: a `where` filter over half of 100k entries is ~100x slower).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from echolm_middleware.backends._lazy import require
from echolm_middleware.config import StoreSettings
from echolm_middleware.core.types import Candidate, Example, InvalidChange, Vector, checked_change
from echolm_middleware.errors import StoreUnavailable

logger = logging.getLogger("echolm")


def collection_name(prefix: str, tenant: str) -> str:
    """A valid Chroma collection name for a tenant; hashing keeps any tenant id safe and fixed-length."""
    return f"{prefix}-{hashlib.sha256(tenant.encode()).hexdigest()[:32]}"


def _bound_http_calls(client: Any, timeout_s: float) -> None:
    """chromadb's HTTP client waits forever (httpx timeout=None). A Chroma server that stops answering,
    as one does after a write fails on a full disk, would then hold our threads for good: every later
    request would fail open on its time budget, and admissions would pile up. Bound each call instead."""
    session = getattr(getattr(client, "_server", None), "_session", None)
    if session is None:  # a chromadb release that moved it: still works, unbounded (contract-tested)
        logger.warning("echolm: cannot bound chromadb's HTTP calls in this chromadb version")
        return
    import httpx

    session.timeout = httpx.Timeout(timeout_s)


def _check_answers(url: str, timeout_s: float) -> None:
    """A bounded heartbeat first: building chromadb's HttpClient makes unbounded calls of its own."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v2/heartbeat", timeout=timeout_s) as response:
            response.read()
    except (OSError, ValueError) as exc:
        raise StoreUnavailable(f"chroma server {url} did not answer within {timeout_s:g} s: {exc}") from exc


def _to_metadata(example: Example) -> dict[str, Any]:
    return {
        "answer": example.answer,
        "source_tier": example.source_tier,
        "quality": float(example.quality),
        "created_at": float(example.created_at),
        "uses": int(example.uses),
        "offload_successes": float(example.offload_successes),
        "gain": float(example.gain),
        "replays": int(example.replays),
        "selected": int(example.selected),
        "value": float(example.value),
        "value_at": float(example.value_at),
        "instructions": example.instructions,
        "context": example.context,
        "admitted_by": example.admitted_by,
        "origin": example.origin,
    }


# How many times n nearest examples a context-filtered lookup first reads without the filter.
_UNFILTERED_WIDTH = 4


def _candidates(result: Any) -> list[Candidate]:
    """Chroma's answer to one query as candidates, nearest first (cosine space: distance = 1 - cos)."""
    ids, documents = result["ids"][0], result["documents"][0]
    metadatas, distances = result["metadatas"][0], result["distances"][0]
    embeddings = result["embeddings"][0]
    return [
        Candidate(_to_example(ids[i], documents[i], metadatas[i]), 1.0 - float(distances[i]), _floats(embeddings[i]))
        for i in range(len(ids))
    ]


def _floats(vector: Any) -> list[float]:
    """A stored vector as a list of floats: numpy's own conversion where chromadb hands back an array."""
    return list(vector.tolist()) if hasattr(vector, "tolist") else [float(x) for x in vector]


def _to_example(example_id: str, document: str, metadata: Mapping[str, Any]) -> Example:
    return Example(
        id=example_id,
        prompt=document,
        answer=str(metadata["answer"]),
        source_tier=str(metadata["source_tier"]),
        quality=float(metadata["quality"]),
        created_at=float(metadata["created_at"]),
        uses=int(metadata.get("uses", 0)),
        offload_successes=float(metadata.get("offload_successes", 0.0)),
        # Entries written before replay existed have none of these.
        gain=float(metadata.get("gain", 0.0)),
        replays=int(metadata.get("replays", 0)),
        selected=int(metadata.get("selected", 0)),
        value=float(metadata.get("value", 0.0)),
        value_at=float(metadata.get("value_at", 0.0)),
        instructions=str(metadata.get("instructions", "")),  # entries written before it was kept have none
        context=str(metadata.get("context", "")),  # so do these: such an entry serves no context
        admitted_by=str(metadata.get("admitted_by", "")),
        origin=str(metadata.get("origin", "")),
    )


class ChromaExampleStore:
    """ExampleStore over chromadb; every library error surfaces as StoreUnavailable."""

    def __init__(self, settings: StoreSettings) -> None:
        self._settings = settings
        self._client: Any = None
        self._collections: dict[str, Any] = {}
        # Read-modify-write of offload counters must not interleave within this process.
        self._lock = threading.RLock()
        # The embedded client runs chromadb's Rust core in this process, and its reads are entered by one
        # thread at a time too, never beside a write: chromadb 1.5's bindings have open reports of SIGSEGV
        # under concurrent calls in one process (chroma-core/chroma#6979, a use-after-free in the HNSW walk).
        # A query takes milliseconds. Several workers share a Chroma server instead: its client only speaks
        # HTTP here, and its reads stay concurrent. (The SIGSEGVs the bench's proxies met with a query in
        # flight trace, by their stack, to LiteLLM's stream finalizer and CPython gh-148891, guarded in
        # doors/litellm_stream_finalizer.py.)
        self._reads: threading.RLock | contextlib.nullcontext[None] = (
            contextlib.nullcontext() if settings.server_url else self._lock
        )

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except (StoreUnavailable, InvalidChange):
            raise  # ours already, or the caller's mistake rather than the store's
        except Exception as exc:
            # A dead server or a broken disk: forget the client so the next call reconnects.
            self._client = None
            self._collections.clear()
            raise StoreUnavailable(f"chroma {action} failed: {exc}") from exc

    def _connect(self) -> Any:
        if self._client is None:
            chromadb = require("chromadb", "chroma")
            chroma_settings = chromadb.config.Settings(anonymized_telemetry=False)
            if self._settings.server_url:
                _check_answers(self._settings.server_url, self._settings.server_timeout_s)
                url = urlparse(self._settings.server_url)
                self._client = chromadb.HttpClient(
                    host=url.hostname or "localhost",
                    port=url.port or 8000,
                    ssl=url.scheme == "https",
                    settings=chroma_settings,
                )
                _bound_http_calls(self._client, self._settings.server_timeout_s)
            else:
                Path(self._settings.path).mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(path=str(self._settings.path), settings=chroma_settings)
        return self._client

    def _collection(self, tenant: str, *, create: bool) -> Any:
        """The tenant's collection, or None when it has none yet and `create` is False."""
        name = collection_name(self._settings.collection_prefix, tenant)
        # Two threads opening the same embedded client at once break chromadb's Rust bindings.
        with self._lock:
            if name in self._collections:
                return self._collections[name]
            client = self._connect()
            if create:
                collection = client.get_or_create_collection(
                    name,
                    configuration={"hnsw": {"space": "cosine"}},
                    metadata={"echolm_tenant": tenant},
                    embedding_function=None,
                )
            else:
                try:
                    collection = client.get_collection(name, embedding_function=None)
                except self._chromadb_errors().NotFoundError:
                    return None
            self._collections[name] = collection
            return collection

    @staticmethod
    def _chromadb_errors() -> Any:
        return require("chromadb.errors", "chroma")

    def nearest(self, tenant: str, vector: Vector, n: int, *, context: str | None = None) -> list[Candidate]:
        with self._reads, self._translated("query"):
            collection = self._collection(tenant, create=False)
            if collection is None:
                return []
            if context is None:
                return _candidates(self._query(collection, vector, n, None))
            # Chroma answers a `where` on metadata by first listing every id that matches it: at 100,000
            # examples of one context that took about 330 ms a query (the whole request budget), where the
            # search alone takes a few. So look among the nearest few times n without the filter first: the
            # context's own nearest n are exactly its first n there whenever that many are there (or the
            # collection has no more). Only a tenant whose contexts are mixed close together pays for `where`.
            wider = n * _UNFILTERED_WIDTH
            ranked = collection.query(query_embeddings=[list(vector)], n_results=wider, include=["distances"])
            ids, distances = ranked["ids"][0], ranked["distances"][0]
            # Records are read n at a time, nearest first, until n of the context are found: Chroma keeps
            # each metadata key as a row of its own, and reading all 4n records (15 keys each) cost about
            # three times the search and the first n together (benchmarks/results/overhead-100k-2026-12-03).
            mine: list[Candidate] = []
            for start in range(0, len(ids), n):
                mine += self._read(collection, ids[start : start + n], distances[start : start + n], context)
                if len(mine) >= n:
                    return mine[:n]
            if len(ids) < wider:
                return mine
            return _candidates(self._query(collection, vector, n, {"context": context}))

    @staticmethod
    def _read(collection: Any, ids: Sequence[str], distances: Sequence[float], context: str) -> list[Candidate]:
        """The records `ids` (nearest first, at `distances`) that belong to `context`, in that order; one
        removed since the search is skipped."""
        got = collection.get(ids=list(ids), include=["documents", "metadatas", "embeddings"])
        where = {example_id: index for index, example_id in enumerate(got["ids"])}
        found = []
        for example_id, distance in zip(ids, distances, strict=True):
            index = where.get(example_id)
            if index is None or str(got["metadatas"][index].get("context", "")) != context:
                continue
            example = _to_example(example_id, got["documents"][index], got["metadatas"][index])
            found.append(Candidate(example, 1.0 - float(distance), _floats(got["embeddings"][index])))
        return found

    @staticmethod
    def _query(collection: Any, vector: Vector, n: int, where: dict[str, str] | None) -> Any:
        # chromadb 1.5 returns what there is when asked for more, and nothing from an empty collection,
        # so no count() first: that was a second read on every request.
        return collection.query(
            query_embeddings=[list(vector)],
            n_results=n,
            where=where,
            include=["documents", "metadatas", "distances", "embeddings"],
        )

    def upsert(self, tenant: str, examples: Sequence[Example], vectors: Sequence[Vector]) -> None:
        if len(examples) != len(vectors):
            raise ValueError("one vector per example")
        batch = self._settings.batch_size
        with self._lock, self._translated("upsert"):
            collection = self._collection(tenant, create=True)
            for start in range(0, len(examples), batch):
                chunk = examples[start : start + batch]
                collection.upsert(
                    ids=[e.id for e in chunk],
                    documents=[e.prompt for e in chunk],
                    metadatas=[_to_metadata(e) for e in chunk],
                    embeddings=[list(v) for v in vectors[start : start + batch]],
                )

    def add(self, tenant: str, examples: Sequence[Example], vectors: Sequence[Vector]) -> int:
        if len(examples) != len(vectors):
            raise ValueError("one vector per example")
        # Held ids are left as they are. Under this process's lock; several workers on one Chroma server
        # may both find an id absent, and chromadb's `add` then keeps the first and ignores the second.
        with self._lock, self._translated("add"):
            collection = self._collection(tenant, create=True)
            held = set(collection.get(ids=list(dict.fromkeys(e.id for e in examples)), include=[])["ids"])
            unique: dict[str, tuple[Example, Vector]] = {}
            for example, vector in zip(examples, vectors, strict=True):
                if example.id not in held:
                    unique.setdefault(example.id, (example, vector))  # the first of an id in the batch too
            fresh = list(unique.values())
            batch = self._settings.batch_size
            for start in range(0, len(fresh), batch):
                chunk = fresh[start : start + batch]
                collection.add(
                    ids=[e.id for e, _ in chunk],
                    documents=[e.prompt for e, _ in chunk],
                    metadatas=[_to_metadata(e) for e, _ in chunk],
                    embeddings=[list(v) for _, v in chunk],
                )
            return len(fresh)

    def modify(self, tenant: str, ids: Sequence[str], change: Callable[[Example], Example]) -> int:
        with self._lock, self._translated("update"):
            collection = self._collection(tenant, create=False)
            if collection is None or not ids:
                return 0
            found = collection.get(ids=list(dict.fromkeys(ids)), include=["documents", "metadatas"])
            if not found["ids"]:
                return 0
            changed = [
                checked_change(_to_example(i, d, m), change)
                for i, d, m in zip(found["ids"], found["documents"], found["metadatas"], strict=True)
            ]
            # One call, one write: each entry holds either its old or its new metadata, never a mix.
            collection.update(ids=found["ids"], metadatas=[_to_metadata(e) for e in changed])
            return len(changed)

    def examples(self, tenant: str) -> list[Example]:
        found: dict[str, Example] = {}
        offset = 0
        while True:
            # A page at a time under the lock: a whole-tenant scan (the upkeep's) must not hold, for all of
            # it, the lock that admissions on the request path take. A write between two pages may shift
            # the offsets: an id read twice is kept once, and an example missed is read by the next scan.
            with self._lock, self._translated("scan"):
                collection = self._collection(tenant, create=False)
                if collection is None:
                    return []
                page = collection.get(
                    limit=self._settings.batch_size * 16, offset=offset, include=["documents", "metadatas"]
                )
            if not page["ids"]:
                return list(found.values())
            offset += len(page["ids"])
            for i, d, m in zip(page["ids"], page["documents"], page["metadatas"], strict=True):
                found.setdefault(i, _to_example(i, d, m))

    def delete(self, tenant: str, ids: Sequence[str]) -> None:
        with self._lock, self._translated("delete"):
            collection = self._collection(tenant, create=False)
            if collection is not None and ids:
                collection.delete(ids=list(ids))

    def tenants(self) -> list[str]:
        prefix = f"{self._settings.collection_prefix}-"
        with self._lock, self._translated("list"):
            collections = self._connect().list_collections()
            return sorted(
                str(c.metadata["echolm_tenant"])
                for c in collections
                if c.name.startswith(prefix) and c.metadata and "echolm_tenant" in c.metadata
            )

    def count(self, tenant: str) -> int:
        with self._reads, self._translated("count"):
            collection = self._collection(tenant, create=False)
            return 0 if collection is None else int(collection.count())
