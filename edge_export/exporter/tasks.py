"""Tasks edge-export exports, and how a task is inferred from a model's config."""

from __future__ import annotations

from typing import Any

from edge_export.errors import ConfigError, InputError

TASKS = ("feature-extraction", "text-classification", "token-classification", "fill-mask", "text-generation")

_SUFFIX_TO_TASK = (
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),  # GPT2LMHeadModel, GPTJ ...
    ("ForMaskedLM", "fill-mask"),
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("Model", "feature-extraction"),
)


def check_task(task: str) -> str:
    """Return the task if it is known, else a ConfigError listing the known ones."""
    if task not in TASKS:
        raise ConfigError(f"unknown task '{task}'", hint=f"choose from: {', '.join(TASKS)}")
    return task


def infer_task(config: Any) -> str:
    """The task implied by config.architectures[0] (e.g. LlamaForCausalLM -> text-generation)."""
    architectures = getattr(config, "architectures", None) or []
    for arch in architectures:
        for suffix, task in _SUFFIX_TO_TASK:
            if arch.endswith(suffix):
                return task
    raise InputError(
        f"cannot infer the task from architectures {architectures or '(none)'}",
        hint=f"pass --task, one of: {', '.join(TASKS)}",
    )


def auto_class(task: str) -> Any:
    """The transformers Auto class that loads a model for `task`."""
    import transformers

    return {
        "feature-extraction": transformers.AutoModel,
        "text-classification": transformers.AutoModelForSequenceClassification,
        "token-classification": transformers.AutoModelForTokenClassification,
        "fill-mask": transformers.AutoModelForMaskedLM,
        "text-generation": transformers.AutoModelForCausalLM,
    }[task]
