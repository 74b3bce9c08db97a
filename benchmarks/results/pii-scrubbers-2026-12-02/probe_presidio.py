"""Step 1 probe: can presidio-analyzer run with no spaCy model and no network?"""
import os, sys, time, logging, socket
logging.basicConfig(level=logging.WARNING)

# Log every outbound connection attempt so we can see runtime downloads.
_orig_connect = socket.socket.connect
attempts = []
def _spy(self, addr):
    attempts.append(addr)
    print("  !! socket.connect attempted:", addr, flush=True)
    return _orig_connect(self, addr)
socket.socket.connect = _spy
_orig_gai = socket.getaddrinfo
def _gai(host, *a, **k):
    attempts.append(("dns", host))
    print("  !! getaddrinfo attempted:", host, flush=True)
    return _orig_gai(host, *a, **k)
socket.getaddrinfo = _gai

t = time.perf_counter()
import presidio_analyzer
from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import NlpEngineProvider
print(f"import presidio_analyzer: {time.perf_counter()-t:.2f}s")
t = time.perf_counter()
import spacy
print("spacy", spacy.__version__, "installed models:", spacy.util.get_installed_models())

# A: default AnalyzerEngine() -> wants en_core_web_lg
print("\n[A] AnalyzerEngine() default")
import spacy.cli
orig_dl = spacy.cli.download
def _no_dl(name, *a, **k):
    raise RuntimeError(f"BLOCKED spacy.cli.download({name!r})")
spacy.cli.download = _no_dl
try:
    AnalyzerEngine()
    print("  OK (unexpected)")
except Exception as e:
    print("  FAILED:", type(e).__name__, str(e)[:200])
spacy.cli.download = orig_dl

# B: no_op NLP engine (ships with 2.2.366)
print("\n[B] NlpEngineProvider(no_op) + AnalyzerEngine")
t = time.perf_counter()
prov = NlpEngineProvider(nlp_configuration={"nlp_engine_name": "no_op", "models": [{"lang_code": "en", "model_name": "no_op"}]})
nlp = prov.create_engine()
eng = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
print(f"  engine built in {time.perf_counter()-t:.2f}s; recognizers:",
      sorted(r.name for r in eng.registry.recognizers))
t = time.perf_counter()
res = eng.analyze("Mail jane.doe@example.com or call +44 7911 123456, card 4111 1111 1111 1111, IBAN DE89370400440532013000, SSN 123-45-6789", language="en")
print(f"  first analyze {time.perf_counter()-t:.2f}s:", [(r.entity_type, r.start, r.end, round(r.score,2)) for r in res])

# C: blank spaCy pipeline through a SpacyNlpEngine subclass (tokens + no NER, gives context words)
print("\n[C] spacy.blank('en') wrapped as SpacyNlpEngine")
from presidio_analyzer.nlp_engine import SpacyNlpEngine
class BlankSpacy(SpacyNlpEngine):
    def load(self):
        self.nlp = {"en": spacy.blank("en")}
t = time.perf_counter()
try:
    be = BlankSpacy(models=[{"lang_code": "en", "model_name": "blank"}])
    be.load()
    eng2 = AnalyzerEngine(nlp_engine=be, supported_languages=["en"])
    res = eng2.analyze("my credit card is 4111 1111 1111 1111 and phone 212-555-0123", language="en")
    print(f"  OK {time.perf_counter()-t:.2f}s:", [(r.entity_type, r.start, r.end, round(r.score,2)) for r in res])
except Exception as e:
    print("  FAILED:", type(e).__name__, str(e)[:300])

# D: recognizers directly with nlp_artifacts=None
print("\n[D] recognizers directly, nlp_artifacts=None")
from presidio_analyzer.predefined_recognizers import (EmailRecognizer, CreditCardRecognizer,
    IbanRecognizer, UsSsnRecognizer, PhoneRecognizer, UrlRecognizer)
for R, txt, ents in [
    (EmailRecognizer, "write to a.b+tag@mail.example.co.uk now", ["EMAIL_ADDRESS"]),
    (CreditCardRecognizer, "card 4111-1111-1111-1111 ok", ["CREDIT_CARD"]),
    (IbanRecognizer, "iban GB82 WEST 1234 5698 7654 32 ok", ["IBAN_CODE"]),
    (UsSsnRecognizer, "ssn 123-45-6789 ok", ["US_SSN"]),
    (PhoneRecognizer, "call +33 1 23 45 67 89 ok", ["PHONE_NUMBER"]),
]:
    t = time.perf_counter()
    try:
        r = R().analyze(txt, ents, nlp_artifacts=None)
        print(f"  {R.__name__}: {[(x.entity_type, txt[x.start:x.end], round(x.score,2)) for x in r]} {time.perf_counter()-t:.3f}s")
    except Exception as e:
        print(f"  {R.__name__} FAILED:", type(e).__name__, e)

print("\nnetwork attempts:", attempts)
import tldextract.cache as tc
print("tldextract cache dir:", tc.get_cache_dir())
