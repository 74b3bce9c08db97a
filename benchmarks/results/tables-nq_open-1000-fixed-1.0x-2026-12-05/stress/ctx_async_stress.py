"""uvloop main thread: many tasks set/reset a ContextVar and await chromadb queries run on a thread pool."""
import asyncio, contextvars, sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import uvloop
import chromadb
from chromadb.config import Settings

path, seconds = sys.argv[1], float(sys.argv[2])
client = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))
col = client.get_or_create_collection("stress", configuration={"hnsw": {"space": "cosine"}})
rng = np.random.default_rng(0)
v = rng.standard_normal((3000, 384)).astype(np.float32); v /= np.linalg.norm(v, axis=1, keepdims=True)
col.upsert(ids=[f"id{i}" for i in range(3000)], embeddings=v.tolist(), documents=["d"] * 3000, metadatas=[{"context": "c"}] * 3000)
var = contextvars.ContextVar("target", default=None)
pool = ThreadPoolExecutor(8)
count = [0]
def query(seed):
    q = np.random.default_rng(seed).standard_normal(384).astype(np.float32); q /= np.linalg.norm(q)
    return col.query(query_embeddings=[q.tolist()], n_results=40, include=["distances"])
async def request(i):
    token = var.set(f"auth{i}")
    try:
        await asyncio.sleep(0)
    finally:
        var.reset(token)
    await asyncio.get_running_loop().run_in_executor(pool, query, i)
    token = var.set(f"post{i}")
    var.reset(token)
    count[0] += 1
async def main():
    stop = time.time() + seconds
    i = 0
    while time.time() < stop:
        await asyncio.gather(*(request(i + k) for k in range(32)))
        i += 32
uvloop.run(main())
print("survived", count, flush=True)
