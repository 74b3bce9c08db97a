"""Hammer one embedded Chroma collection from many threads: queries, gets and upserts at once."""
import os, random, sys, threading, time
import numpy as np
import chromadb
from chromadb.config import Settings

path = sys.argv[1]
seconds = float(sys.argv[2])
lock = threading.Lock() if len(sys.argv) > 3 and sys.argv[3] == "lock" else None
client = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))
col = client.get_or_create_collection("stress", metadata={"hnsw:space": "cosine"})
rng = np.random.default_rng(0)
def vec(n): 
    v = rng.standard_normal((n, 384)).astype(np.float32); return (v / np.linalg.norm(v, axis=1, keepdims=True)).tolist()
ids = [f"id{i}" for i in range(2000)]
col.upsert(ids=ids, embeddings=vec(2000), documents=["doc"] * 2000, metadatas=[{"context": "c", "q": i} for i in range(2000)])
stop = time.time() + seconds
counts = {"query": 0, "get": 0, "upsert": 0, "update": 0}
def guarded(fn):
    if lock is None: return fn()
    with lock: return fn()
def querier():
    r = random.Random()
    while time.time() < stop:
        q = np.random.default_rng(r.randrange(1 << 30)).standard_normal(384).astype(np.float32)
        res = guarded(lambda: col.query(query_embeddings=[(q / np.linalg.norm(q)).tolist()], n_results=40, include=["distances"]))
        guarded(lambda: col.get(ids=res["ids"][0][:10], include=["documents", "metadatas", "embeddings"]))
        counts["query"] += 1
def writer(k):
    n = 0
    r = np.random.default_rng(k)
    while time.time() < stop:
        v = r.standard_normal((4, 384)).astype(np.float32); v = (v / np.linalg.norm(v, axis=1, keepdims=True)).tolist()
        new = [f"w{k}-{n}-{j}" for j in range(4)]
        guarded(lambda: col.upsert(ids=new, embeddings=v, documents=["d"] * 4, metadatas=[{"context": "c", "q": n}] * 4))
        guarded(lambda: col.update(ids=[f"id{random.randrange(2000)}"], metadatas=[{"context": "c", "q": -n}]))
        n += 1
        counts["upsert"] += 1
threads = [threading.Thread(target=querier) for _ in range(8)] + [threading.Thread(target=writer, args=(k,)) for k in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("survived", counts, "lock" if lock else "no lock", flush=True)
