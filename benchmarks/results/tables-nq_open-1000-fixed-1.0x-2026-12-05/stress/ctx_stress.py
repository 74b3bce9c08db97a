"""Main thread: ContextVar set/reset in a tight loop (as LiteLLM's auth does per request); 8 threads: chromadb queries."""
import contextvars, sys, threading, time
import numpy as np
import chromadb
from chromadb.config import Settings

path, seconds = sys.argv[1], float(sys.argv[2])
client = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))
col = client.get_or_create_collection("stress", configuration={"hnsw": {"space": "cosine"}})
rng = np.random.default_rng(0)
v = rng.standard_normal((3000, 384)).astype(np.float32); v /= np.linalg.norm(v, axis=1, keepdims=True)
col.upsert(ids=[f"id{i}" for i in range(3000)], embeddings=v.tolist(), documents=["d"] * 3000, metadatas=[{"context": "c"}] * 3000)
stop = time.time() + seconds
var = contextvars.ContextVar("target", default=None)
n = [0, 0]
def querier(k):
    r = np.random.default_rng(k)
    while time.time() < stop:
        q = r.standard_normal(384).astype(np.float32); q /= np.linalg.norm(q)
        col.query(query_embeddings=[q.tolist()], n_results=40, include=["distances"])
        n[0] += 1
ts = [threading.Thread(target=querier, args=(k,)) for k in range(8)]
for t in ts: t.start()
while time.time() < stop:
    for _ in range(1000):
        token = var.set("x")
        var.reset(token)
    n[1] += 1000
for t in ts: t.join()
print("survived", n, flush=True)
