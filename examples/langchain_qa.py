"""A small Q&A chain over the local tiers through EchoLMChatModel, printing each answer with its decision.

    .venv/bin/python examples/langchain_qa.py                 # tiers from config.yaml, a fresh store
    .venv/bin/python examples/langchain_qa.py --store .echolm/langchain-example

It starts the local llama.cpp tiers that config.yaml names unless they already answer (and stops the
ones it started), asks each question and then a paraphrase of it: the first goes to the strong tier
and its answer is admitted; the paraphrase finds it and is answered by the cheap tier with it as an
example. Finally it prints `explain` for the last decision.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

from echolm_lab.local_tiers.assemble import default_model_dir
from echolm_lab.local_tiers.from_config import specs_for_config
from echolm_lab.local_tiers.servers import running_tiers
from echolm_middleware.config import load_settings, read_config_file
from echolm_middleware.doors.langchain_chat import EchoLMChatModel
from echolm_middleware.explain import format_decision

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    ("Who wrote the play Romeo and Juliet?", "who is the author of romeo and juliet"),
    ("What is the largest planet in the solar system?", "which planet in our solar system is the biggest"),
    ("In what year did the Berlin Wall fall?", "when did the berlin wall come down"),
]


def chat_model_for(group: str, model_list: list[dict[str, Any]]) -> ChatOpenAI:
    """LangChain's OpenAI-compatible chat model for a LiteLLM model group served on an OpenAI API."""
    (params,) = [entry["litellm_params"] for entry in model_list if entry["model_name"] == group]
    return ChatOpenAI(
        base_url=params["api_base"],
        model=str(params["model"]).split("/", 1)[-1],
        api_key=params.get("api_key", "local"),
        temperature=params.get("temperature", 0),
        # ChatOpenAI sends `max_tokens` as `max_completion_tokens`, which llama.cpp's server ignores.
        extra_body={"max_tokens": params.get("max_tokens", 64)},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", type=Path, default=ROOT / "config.yaml", help="LiteLLM config with an echolm section"
    )
    parser.add_argument(
        "--store", type=Path, help="directory for the Chroma store and state (default: a temporary one)"
    )
    args = parser.parse_args()

    settings, raw = load_settings(args.config)
    store_dir = args.store or Path(tempfile.mkdtemp(prefix="echolm-langchain-"))
    settings = settings.stored_under(store_dir)
    specs = specs_for_config(read_config_file(args.config), default_model_dir())
    with running_tiers(specs, ROOT / ".echolm" / "run"):
        model = EchoLMChatModel(
            tenant="qa-demo",  # whom the cache serves: calls that name no tenant pass through
            tiers=[chat_model_for(tier.name, raw["model_list"]) for tier in settings.tiers],
            settings=settings,
        )
        engine = model.wait_until_ready()
        prompt = ChatPromptTemplate.from_messages(
            [("system", "Answer with a short phrase only, no explanation."), ("user", "{question}")]
        )
        chain = prompt | model
        last_id = ""
        for pair in QUESTIONS:
            for question in pair:
                reply = chain.invoke({"question": question})
                decision = reply.response_metadata["echolm"]
                last_id = decision["request_id"]
                print(
                    f"{decision['tier']:>7} | examples {decision['examples']} | best similarity "
                    f"{decision['best_similarity'] or 0:.3f} | overhead {decision['overhead_ms']:.1f} ms | "
                    f"{question!r} -> {str(reply.content).strip()!r}"
                )
        print()
        print(format_decision(engine.explain(last_id), engine.decisions.recorded_by(last_id)))
        print(f"\nstore and decisions: {store_dir}")


if __name__ == "__main__":
    main()
