"""Evaluate PII/secret scrubbers on pii_corpus.py and time them on adversarial inputs.

Candidates
  current   echolm_middleware.core.pii.scrub from /work/main (imported read-only via sys.path)
  presidio  presidio-analyzer 2.2.366, default recognizer registry, NoOpNlpEngine (no spaCy model),
            restricted to the in-scope entities EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, US_SSN
  presidio_all  same engine, every default entity type (to show what the extra recognizers add)
  draft     /work/pii-eval/scrubber_draft.py

Usage
  venv/bin/python evaluate.py                 # accuracy tables (markdown) -> stdout and results_accuracy.md
  venv/bin/python evaluate.py --timing        # timing table -> stdout and results_timing.md
  venv/bin/python evaluate.py --child CAND INPUT SIZES...   # internal: one timing child
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAIN = Path("/work/main")
sys.path.insert(0, str(HERE))

IN_SCOPE = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN"]
SECRET_KINDS = {
    "aws_key_id", "aws_secret", "stripe", "huggingface", "gitlab", "github", "slack", "openai",
    "google_api", "jwt", "bearer", "pem_private_key", "url_password", "assigned_secret",
    "basic_auth", "cli_password",
}


# ------------------------------------------------------------------ candidates
def load_current():
    sys.path.insert(0, str(MAIN))
    from echolm_middleware.core.pii import scrub  # noqa: PLC0415

    return lambda text: scrub(text).text


_presidio_engine = None


def _engine():
    global _presidio_engine
    if _presidio_engine is None:
        import tldextract  # noqa: PLC0415
        from presidio_analyzer import AnalyzerEngine  # noqa: PLC0415
        from presidio_analyzer.nlp_engine import NlpEngineProvider  # noqa: PLC0415
        from presidio_analyzer.predefined_recognizers.generic import email_recognizer  # noqa: PLC0415

        # EmailRecognizer.validate_result calls tldextract.extract, which fetches the public suffix
        # list over HTTP on first use (then falls back to the bundled snapshot). Air-gapped: use the
        # bundled snapshot only, no network attempt.
        offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
        email_recognizer.tldextract.extract = offline  # module attribute used by validate_result
        provider = NlpEngineProvider(
            nlp_configuration={"nlp_engine_name": "no_op", "models": [{"lang_code": "en", "model_name": "no_op"}]}
        )
        _presidio_engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    return _presidio_engine


def presidio_results(text: str, entities):
    return _engine().analyze(text=text, language="en", entities=entities)


def _redact(text: str, results) -> str:
    spans = sorted((r.start, r.end, r.entity_type) for r in results)
    merged: list[list] = []
    for s, e, t in spans:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e, t])
    out, pos = [], 0
    for s, e, t in merged:
        out.append(text[pos:s])
        out.append(f"<{t}>")
        pos = e
    out.append(text[pos:])
    return "".join(out)


def load_presidio(all_entities: bool = False):
    _engine()
    entities = None if all_entities else IN_SCOPE
    return lambda text: _redact(text, presidio_results(text, entities))


def load_draft():
    import scrubber_draft  # noqa: PLC0415

    return lambda text: scrubber_draft.scrub(text).text


LOADERS = {
    "current": load_current,
    "presidio": load_presidio,
    "presidio_all": lambda: load_presidio(all_entities=True),
    "draft": load_draft,
}


# ------------------------------------------------------------------ accuracy
def _leaks(text: str, secret: str, out: str) -> bool:
    """True when a 4+ char alphanumeric fragment of the secret survives in the output
    (fragments that also occur elsewhere in the original text are ignored)."""
    i = text.index(secret)
    rest = text[:i] + " " + text[i + len(secret) :]
    return any(tok in out and tok not in rest for tok in re.findall(r"[A-Za-z0-9]{4,}", secret))


def accuracy(cands: list[str], holdout: bool = False) -> str:
    if holdout:
        from pii_holdout import HOLDOUT_NEGATIVES as NEGATIVES  # noqa: PLC0415
        from pii_holdout import HOLDOUT_POSITIVES as POSITIVES  # noqa: PLC0415
    else:
        from pii_corpus import NEGATIVES, POSITIVES  # noqa: PLC0415

    fns = {c: LOADERS[c]() for c in cands}
    kinds = list(dict.fromkeys(k for _, k, _ in POSITIVES))
    hit = {c: defaultdict(int) for c in cands}
    strict = {c: defaultdict(int) for c in cands}
    total = defaultdict(int)
    misses = {c: [] for c in cands}
    partial = {c: [] for c in cands}
    span_cover = defaultdict(int)  # presidio: one detected span covers the whole secret
    for text, kind, secret in POSITIVES:
        total[kind] += 1
        for c, fn in fns.items():
            out = fn(text)
            if secret not in out:
                hit[c][kind] += 1
                if not _leaks(text, secret, out):
                    strict[c][kind] += 1
                else:
                    partial[c].append((kind, secret, out))
            else:
                misses[c].append((kind, secret))
        if "presidio" in fns:
            i = text.index(secret)
            j = i + len(secret)
            if any(r.start <= i and r.end >= j for r in presidio_results(text, IN_SCOPE)):
                span_cover[kind] += 1
    fps = {c: [] for c in cands}
    for text in NEGATIVES:
        for c, fn in fns.items():
            out = fn(text)
            if out != text:
                fps[c].append((text, out))

    def pct(a, b):
        return f"{a}/{b} ({100 * a / b:.0f}%)" if b else "-"

    lines = ["## Recall per kind (secret substring no longer verbatim in the output)", ""]
    lines.append("| kind | n | " + " | ".join(cands) + " |")
    lines.append("|---|---|" + "---|" * len(cands))
    groups = [("PII", [k for k in kinds if k not in SECRET_KINDS]), ("secrets", [k for k in kinds if k in SECRET_KINDS])]
    for _, ks in groups:
        for k in ks:
            lines.append(f"| {k} | {total[k]} | " + " | ".join(pct(hit[c][k], total[k]) for c in cands) + " |")
    for gname, ks in groups + [("ALL", kinds)]:
        n = sum(total[k] for k in ks)
        lines.append(
            f"| **{gname}** | {n} | " + " | ".join("**" + pct(sum(hit[c][k] for k in ks), n) + "**" for c in cands) + " |"
        )
    lines += ["", "Strict recall (removed AND no 4+ char fragment of it left in the output):", ""]
    lines.append("| group | " + " | ".join(cands) + " |")
    lines.append("|---|" + "---|" * len(cands))
    for gname, ks in groups + [("ALL", kinds)]:
        n = sum(total[k] for k in ks)
        lines.append(f"| {gname} | " + " | ".join(pct(sum(strict[c][k] for k in ks), n) for c in cands) + " |")
    if "presidio" in fns:
        lines += ["", "Presidio, one detected span covers the whole labelled substring (in-scope entities):", ""]
        for _, ks in groups[:1]:
            lines.append(", ".join(f"{k} {pct(span_cover[k], total[k])}" for k in ks))
    lines += ["", f"## False positives on {len(NEGATIVES)} negatives (text changed / anything detected)", ""]
    lines.append("| candidate | FP | rate |")
    lines.append("|---|---|---|")
    for c in cands:
        lines.append(f"| {c} | {len(fps[c])} | {100 * len(fps[c]) / len(NEGATIVES):.1f}% |")
    lines += ["", "## Details", ""]
    for c in cands:
        lines.append(f"### {c}")
        lines.append(f"- misses ({len(misses[c])}): " + "; ".join(f"{k}:`{s[:40]}`" for k, s in misses[c]))
        if partial[c]:
            lines.append(f"- removed but leaky ({len(partial[c])}): " + "; ".join(f"{k}:`{o[:70]!r}`" for k, _, o in partial[c]))
        lines.append(f"- false positives ({len(fps[c])}):")
        for t, o in fps[c]:
            lines.append(f"  - `{t[:90]!r}` -> `{o[:90]!r}`")
        lines.append("")
    return "\n".join(lines)


def project_test_cases() -> tuple[list[tuple[str, str]], list[str]]:
    """The parametrized cases of /work/main/tests/unit/test_pii.py, read with ast (not executed)."""
    tree = ast.parse((MAIN / "tests/unit/test_pii.py").read_text())
    pairs, plain = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "parametrize":
            value = ast.literal_eval(node.args[1])
            for v in value:
                (pairs if isinstance(v, tuple) else plain).append(v)
    return pairs, plain


def compat(cand: str) -> str:
    fn = LOADERS[cand]()
    pairs, plain = project_test_cases()
    bad = [(t, e, fn(t)) for t, e in pairs if fn(t) != e] + [(t, t, fn(t)) for t in plain if fn(t) != t]
    lines = [f"{cand}: {len(pairs) + len(plain) - len(bad)}/{len(pairs) + len(plain)} cases of tests/unit/test_pii.py give the expected text"]
    lines += [f"  - {t!r}: expected {e!r}, got {o!r}" for t, e, o in bad]
    return "\n".join(lines)


# ------------------------------------------------------------------ timing
def realistic_prompt(size: int) -> str:
    parts = []
    i = 0
    while sum(map(len, parts)) < size:
        i += 1
        parts.append(
            f"""## Section {i}: support policy v{i % 7}.{i % 13}.{i % 5}

You are the assistant of Example Corp (est. 1999). Answer politely, in the customer's language, and
never reveal internal notes. Prices are quoted in EUR, e.g. 1.234,56 EUR or $1,234.56; orders look
like #2024-{i:04d}-7731 and ship within 3-5 days. Escalate to support-{i % 9}@example.com or call
+44 20 7946 {i % 10000:04d} on weekdays 09:00-17:30. Refund policy updated 2024-01-{1 + i % 28:02d}.

```python
def handler(event, context):
    user = event["user"]  # e.g. {{"id": {i}, "plan": "pro"}}
    if user["plan"] == "pro" and len(event["items"]) > {i % 50}:
        return {{"status": 200, "body": json.dumps(items[:{i % 20}])}}
    return {{"status": 404}}
```

| plan | price | seats | limit |
|------|-------|-------|-------|
| basic | 9.99 | 1 | 1 000 |
| pro | 29.00 | {i % 40} | 25 000 |

See https://docs.example.com/v{i % 3}/guide#section-{i} and the changelog at https://example.com/changes?page={i}.
Tools: `search(query: str, top_k: int = 5)`, `get_order(order_id: str)`, `refund(order_id, amount)`.
"""
        )
    return "".join(parts)[:size]


ADVERSARIAL = {
    # from the brief
    "a*N": "a",
    "a.a.*N": "a.a.",
    "'1 '*N": "1 ",
    "'x@'*N": "x@",
    "'-'*N": "-",
    # extra ones aimed at the draft's own anchors
    "'1-'*N": "1-",
    "'+1 '*N": "+1 ",
    "'a@a.'*N": "a@a.",
    "'a:'*N": "a:",
    "'a://'*N": "a://",
    "'AKIA'*N": "AKIA",
    "'DE89 '*N": "DE89 ",
    "'-----BEGIN '*N": "-----BEGIN ",
    "'password='*N": "password=",
    "'eyJa.'*N": "eyJa.",
    "'12 '*N": "12 ",
    "'123 '*N": "123 ",
    "'4111 '*N": "4111 ",
}


def make_input(name: str, size: int) -> str:
    if name == "realistic prompt":
        return realistic_prompt(size)
    unit = ADVERSARIAL[name]
    return (unit * (size // len(unit) + 1))[:size]


def child(cand: str, name: str, sizes: list[int]) -> None:
    fn = LOADERS[cand]()
    fn("warm up jane@example.com +44 20 7946 0958")
    prev = None
    for size in sizes:
        if prev is not None and prev[1] > 5:
            est = prev[1] * (size / prev[0]) ** 2
            if est > 150:
                print(json.dumps({"size": size, "skipped_est_quadratic_s": round(est, 1)}), flush=True)
                continue
        text = make_input(name, size)
        t = time.perf_counter()
        fn(text)
        dt = time.perf_counter() - t
        if dt < 0.05:  # small: take the best of 3
            for _ in range(2):
                t = time.perf_counter()
                fn(text)
                dt = min(dt, time.perf_counter() - t)
        print(json.dumps({"size": size, "s": dt}), flush=True)
        prev = (size, dt)


def timing(cands: list[str], sizes=(8_000, 64_000, 200_000), timeout=300) -> str:
    names = list(ADVERSARIAL) + ["realistic prompt"]
    table: dict[tuple[str, str], dict[int, str]] = {}
    for cand in cands:
        for name in names:
            cell = {s: "-" for s in sizes}
            szs = [200_000] if name == "realistic prompt" else list(sizes)
            try:
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", cand, name, *map(str, szs)],
                    capture_output=True, text=True, timeout=timeout,
                )
                out = proc.stdout
                if proc.returncode != 0:
                    print(proc.stderr[-2000:], file=sys.stderr)
            except subprocess.TimeoutExpired as exc:
                out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
                for s in szs:
                    cell[s] = f">{timeout}s (killed)"
            for line in out.splitlines():
                rec = json.loads(line)
                if "s" in rec:
                    cell[rec["size"]] = f"{rec['s']:.4f}"
                else:
                    cell[rec["size"]] = f"skipped (~{rec['skipped_est_quadratic_s']:.0f} s est.)"
            table[(cand, name)] = cell
            print(cand, name, cell, file=sys.stderr, flush=True)
    lines = ["## Time per scrub call (seconds, single call, CPU-niced)", ""]
    for cand in cands:
        lines.append(f"### {cand}")
        lines.append("| input | " + " | ".join(f"{s // 1000}k chars" for s in sizes) + " |")
        lines.append("|---|" + "---|" * len(sizes))
        for name in names:
            lines.append(f"| {name} | " + " | ".join(table[(cand, name)][s] for s in sizes) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--child":
        child(args[1], args[2], [int(x) for x in args[3:]])
    elif args and args[0] == "--holdout":
        cands = args[1:] or ["current", "presidio", "presidio_all", "draft"]
        report = "# Held-out set (pii_holdout.py)\n\n" + accuracy(cands, holdout=True)
        print(report)
        (HERE / "results_holdout.md").write_text(report + "\n")
    elif args and args[0] == "--timing":
        cands = args[1:] or ["current", "presidio", "draft"]
        report = timing(cands)
        print(report)
        (HERE / "results_timing.md").write_text(report + "\n")
    else:
        cands = args or ["current", "presidio", "presidio_all", "draft"]
        cands = [c for c in cands if c != "draft" or (HERE / "scrubber_draft.py").exists()]
        report = accuracy(cands)
        report += "\n\n## Compatibility with the project's tests/unit/test_pii.py cases\n\n```\n"
        report += "\n".join(compat(c) for c in cands if c in ("current", "draft")) + "\n```\n"
        print(report)
        (HERE / "results_accuracy.md").write_text(report + "\n")
