"""Settings shared by every test: no network lookups from the libraries we drive."""

from __future__ import annotations

import os

# litellm fetches its cost map from the network on import unless told not to; this machine has none.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
