"""The proxy's native mix without LiteLLM: the real engine (MiniLM, embedded Chroma, SQLite state, token
counters) driven from many threads at once: prepare, record (admitting strong answers), release."""
import os, random, sys, threading, time
from pathlib import Path
from echolm_middleware.config import load_settings
from echolm_middleware.factory import build_engine
from echolm_middleware.core.types import ChatRequest, Outcome
from echolm_middleware.core.engine import SHARED_TENANT
from echolm_lab.bench.workloads import load_workload

work, seconds, threads_n = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
os.environ["ECHOLM_STORE__PATH"] = str(work / "chroma")
os.environ["ECHOLM_STATE__PATH"] = str(work / "state.db")
settings, raw = load_settings(Path(sys.argv[4]))
engine = build_engine(settings, raw["model_list"])
engine.warm_up()
workload = load_workload("nq_open", Path("/work/shared/data"))
items = workload.items
stop = time.time() + seconds
done = [0]
def worker(k):
    r = random.Random(k)
    while time.time() < stop:
        item = r.choice(items)
        req = ChatRequest(tenant=SHARED_TENANT, model="strong", messages=workload.messages(item))
        prepared = engine.prepare(req)
        rid = prepared.decision.request_id
        if rid:
            engine.record(Outcome(rid, prepared.tier, f"The answer is {r.randrange(1000)}.", "stop", 0.5))
            engine.release(rid)
        done[0] += 1
ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads_n)]
for t in ts: t.start()
for t in ts: t.join()
print("survived", done[0], flush=True)
