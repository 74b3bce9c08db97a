"""The bench's EchoLM proxy (its proxy.yaml, a copy of its NQ-open warm store) over two instant fake tiers
(tests/echo_tier.py on the tier ports), hammered by many streaming clients until it dies or time runs out.

    python proxy_stress.py PASS_DIR WORK_DIR SECONDS CLIENTS [KEY=VALUE ...]   (extra proxy environment)
"""
import os, random, shutil, sys, threading, time
from pathlib import Path

sys.path.insert(0, "/work/main")
from tests.echo_tier import EchoTier
from echolm_lab.proxy_process import start_proxy
from echolm_lab.bench.systems import ProxyChat
from echolm_lab.bench.workloads import load_workload

pass_dir, work, seconds, clients = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
SLOW = "slow" in sys.argv[5:]
extra = dict(arg.split("=", 1) for arg in sys.argv[5:] if "=" in arg)
shutil.rmtree(work, ignore_errors=True)
shutil.copytree(pass_dir.parent / "warm", work, ignore=shutil.ignore_patterns("*.log", "*.yaml"))
env = dict(os.environ, ECHOLM_STORE__PATH=str(work / "chroma"), ECHOLM_STATE__PATH=str(work / "state.db"), **extra)
workload = load_workload("nq_open", Path("/work/shared/data"))
with EchoTier("cheap", 8101), EchoTier("strong", 8102):
    proxy = start_proxy(pass_dir / "proxy.yaml", env=env, log_path=work / "proxy.log")
    chat = ProxyChat(proxy.url, proxy.master_key, timeout_s=60)
    stop = time.time() + seconds
    done, errors = [0], [0]
    def client(k):
        r = random.Random(k)
        while time.time() < stop and proxy.process.poll() is None:
            messages = workload.messages(r.choice(workload.items))
            if SLOW:
                messages[-1] = {**messages[-1], "content": messages[-1]["content"] + " [slow]"}
            answered = chat("strong", messages, 64)
            done[0] += 1
            errors[0] += answered.error is not None
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.time()
    for t in threads: t.start()
    for t in threads: t.join()
    ended = proxy.ended_unasked()
    print(f"{done[0]} requests, {errors[0]} errors in {time.time() - started:.0f} s; proxy: {ended or 'alive'}", flush=True)
    proxy.stop()
