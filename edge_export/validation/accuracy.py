"""Compare a candidate runtime with the fp32 PyTorch reference on the same inputs.

The reference side (cases, reference outputs, reference generation and perplexity) is computed
once per model and reused for every recipe and every target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_export.devices.agent.lm import (
    forced_decode_logits,
    greedy_generate,
    perplexity,
    session_for,
    token_logits,
)
from edge_export.exporter.prepared import PreparedModel, Runnable
from edge_export.exporter.textdata import TextData
from edge_export.validation import metrics as m
from edge_export.validation.cases import Case, decoder_cases, encode, encoder_cases


@dataclass
class AccuracyResult:
    """Aggregated metrics (gated) and per-case details (informational)."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


def _valid_for(output: np.ndarray, case: Case) -> np.ndarray:
    if output.ndim >= 3:
        return case.valid
    return case.valid.any(axis=1)


def _other_outputs(case: Case, ref_out: dict, cand_out: dict, primary: str) -> dict[str, dict[str, float]]:
    """SQNR and worst cosine of every output besides the primary one (hidden states next to a pooled
    embedding, the KV presents next to the logits): an output nobody gates could be anything.
    Token-shaped outputs are compared row by row over valid positions, others (KV caches) per sample."""
    found = {}
    for name, ref in ref_out.items():
        cand = cand_out.get(name)
        if name == primary or cand is None or np.shape(cand) != np.shape(ref) or np.ndim(ref) < 2:
            continue
        cand = np.asarray(cand, dtype=np.float32)
        if ref.shape[:2] == case.valid.shape:
            rows_ref, rows_cand, valid = ref, cand, case.valid
        else:
            rows_ref, rows_cand, valid = ref.reshape(ref.shape[0], -1), cand.reshape(cand.shape[0], -1), None
        found[name] = {"sqnr_db": m.sqnr_db(rows_ref, rows_cand, valid),
                       "cosine_min": float(m.row_cosines(rows_ref, rows_cand, valid).min())}  # fmt: skip
    return found


def _row_metrics(case: Case, ref: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Error, SQNR and worst row cosine of one output over the case's valid positions."""
    cand = np.asarray(candidate, dtype=np.float32)
    valid = _valid_for(ref, case)
    return {
        "max_abs_error": m.max_abs_error(ref, cand, valid),
        "sqnr_db": m.sqnr_db(ref, cand, valid),
        "cosine_min": float(m.row_cosines(ref, cand, valid).min()),
        "norm_ratio_dev": m.norm_ratio_dev(ref, cand, valid),
    }


TASK_METRICS = {
    "feature-extraction": "embedding_cosine_min",
    "text-classification": "top1_agreement",
    "token-classification": "top1_agreement",
    "fill-mask": "top1_agreement",
}


def task_metric_name(task: str) -> str | None:
    """The gated metric of a task beyond the primary output's (None: the task has none)."""
    return TASK_METRICS.get(task)


def task_outputs(task: str, ref_out: dict[str, Any]) -> set[str]:
    """The outputs `task_value` reads for a task (given the reference's output names)."""
    if task == "feature-extraction":
        return {"sentence_embedding" if "sentence_embedding" in ref_out else "last_hidden_state"}
    return {"logits"} if task in TASK_METRICS else set()


def task_value(task: str, case: Case, ref_out: dict, cand_out: dict) -> float:
    """The task metric of one case: worst embedding cosine, or top-1 agreement of the logits."""
    if task == "feature-extraction":
        if "sentence_embedding" in ref_out:
            ref, cand = ref_out["sentence_embedding"], cand_out["sentence_embedding"]
        else:
            mask = case.feeds["attention_mask"]
            ref = m.mean_pool(ref_out["last_hidden_state"], mask)
            cand = m.mean_pool(cand_out["last_hidden_state"], mask)
        return float(m.row_cosines(ref, cand).min())
    if task == "fill-mask":
        return m.top1_agreement(ref_out["logits"], cand_out["logits"], case.masked_positions)
    if task == "text-classification":
        return m.top1_agreement(ref_out["logits"], cand_out["logits"])
    if task == "token-classification":  # per-token labels, padding excluded
        return m.top1_agreement(ref_out["logits"], cand_out["logits"], case.valid)
    return float("nan")


@dataclass(frozen=True)
class DeviceReference:
    """The PyTorch reference for one set of device inputs, kept small enough to outlive the model
    (the device lab scores a device's outputs after the export run has ended): a graph model's
    primary output and task output (`outputs`), or a decoder's greedy continuation (`generated`)."""

    task: str
    primary: str
    outputs: dict[str, np.ndarray]
    generated: list[int] | None = None

    def missing(self, outputs: dict[str, np.ndarray]) -> list[str]:
        """The outputs scoring needs that the device did not return."""
        needed = ["generated_ids"] if self.generated is not None else list(self.outputs)
        return [name for name in needed if name not in outputs]

    def score(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Score what a device returned for `feeds` (the feeds this reference was made for).

        Graph runs: the primary output's error, SQNR and worst row cosine, plus the task metric.
        Generate runs (decoders): how much of the device's greedy continuation of the prompt is
        identical to PyTorch's (`generation_match`).
        """
        if self.generated is not None:
            cand = [int(t) for t in np.asarray(outputs["generated_ids"]).reshape(-1)]
            count = min(len(self.generated), len(cand))
            match = m.matching_prefix(self.generated[:count], cand[:count])
            return {"generation_match": match / max(1, count)}
        case = Case("device", feeds, feeds["attention_mask"].astype(bool))
        metrics = _row_metrics(case, self.outputs[self.primary], outputs[self.primary])
        if name := task_metric_name(self.task):
            metrics[name] = task_value(self.task, case, self.outputs, outputs)
        return metrics


class Validator:
    """Holds the reference results for one model; `measure` scores any candidate against them."""

    def __init__(self, model: PreparedModel, text: TextData, generate_tokens: int = 32) -> None:
        self.model = model
        self.text = text
        self.generate_tokens = generate_tokens
        reference = model.reference()
        if model.io.kind == "decoder":
            self.cases = decoder_cases(model, text, reference)
        else:
            self.cases = encoder_cases(model, text)
        self.ref_outputs = [reference.run(c.feeds) for c in self.cases]
        self.ref_lm: dict[str, Any] = {}
        self._device_generations: dict[tuple[int, ...], list[int]] = {}
        if model.io.kind == "decoder":
            self.ref_lm = self._lm_measure(reference)

    def _lm_measure(self, runnable: Runnable) -> dict[str, Any]:
        session = session_for(runnable, self.model.io.to_dict())
        limit = min(self.model.max_positions, 512, session.capacity or 512)
        ids = encode(self.model, self.text.passage, limit)
        logits = token_logits(session, ids)
        prompt = encode(self.model, self.text.samples[0], 64)
        generated = greedy_generate(session, prompt, self.generate_tokens)
        # the reference's own continuation, forced through this session's single-token decode path
        forced = self.ref_lm["generated"] if self.ref_lm else generated
        decode = forced_decode_logits(session, prompt, forced)
        return {"ids": ids, "logits": logits, "ppl": perplexity(logits, ids), "generated": generated,
                "decode_logits": decode}  # fmt: skip

    def _case_outputs(self, candidate: Runnable) -> tuple[list[tuple[Case, dict, dict]], dict[str, str]]:
        """(case, reference, candidate outputs) for every case the candidate can run.

        Stateful LM programs (a static KV cache inside, batch 1) run the batch-1 prefill case as
        one prefill and again as prefill + single-token decode steps; batch-2 cases do not apply.
        """
        session = candidate.lm_session()
        if session is None:
            return [
                (c, r, candidate.run(c.feeds)) for c, r in zip(self.cases, self.ref_outputs, strict=True)
            ], {}
        triples, skipped = [], {}
        for case, ref_out in zip(self.cases, self.ref_outputs, strict=True):
            ids = case.feeds["input_ids"]
            if ids.shape[0] != 1 or case.name != "batch1-prefill":
                skipped[case.name] = "the program runs batch 1 with its cache inside"
                continue
            ids = ids[:, : session.capacity] if session.capacity else ids
            part = Case(case.name, {"input_ids": ids}, case.valid[:, : ids.shape[1]])
            ref_part = {k: v[:, : ids.shape[1]] for k, v in ref_out.items() if k == "logits"}
            session.reset()
            triples.append((part, ref_part, {"logits": session.step(ids)}))
            split = max(1, ids.shape[1] - 8)
            session.reset()
            steps = [session.step(ids[:, :split])] + [
                session.step(ids[:, i : i + 1]) for i in range(split, ids.shape[1])
            ]
            decode = Case("batch1-prefill-then-decode", part.feeds, part.valid)
            triples.append((decode, ref_part, {"logits": np.concatenate(steps, axis=1)}))
            if session.prefill is not None:  # a separate prompt path (prefill signatures)
                triples.append(self._prefill_path_case(session, part, ref_part, split))
        return triples, skipped

    @staticmethod
    def _prefill_path_case(session: Any, part: Case, ref_part: dict, split: int) -> tuple[Case, dict, dict]:
        """The prompt through the session's prefill path, then decode steps: logits from split-1 on."""
        ids = part.feeds["input_ids"]
        session.reset()
        logits = [session.prefill(ids[0, :split])] + [
            session.step(ids[:, i : i + 1]) for i in range(split, ids.shape[1])
        ]
        case = Case(
            "batch1-prefill-path-then-decode", {"input_ids": ids[:, split - 1 :]}, part.valid[:, split - 1 :]
        )
        return (
            case,
            {"logits": ref_part["logits"][:, split - 1 :]},
            {"logits": np.concatenate(logits, axis=1)},
        )

    def _fixed_shape_triples(self, candidate: Runnable) -> list[tuple[Case, dict, dict]]:
        """Programs with fixed-shape variants (sequence buckets): every case through every variant,
        cut to the variant's length, against a fresh reference on the same cut inputs."""
        variants = candidate.fixed_shape_variants()
        if not variants:
            return []
        reference = self.model.reference()
        triples = []
        for label, (length, runnable) in variants.items():
            for case in self.cases:
                feeds = {k: v[:, :length] for k, v in case.feeds.items()}
                cut = Case(f"{case.name}@{label}", feeds, case.valid[:, :length])
                triples.append((cut, reference.run(feeds), runnable.run(feeds)))
        return triples

    def measure(self, candidate: Runnable) -> AccuracyResult:
        """Every metric that applies to the model's task, plus per-case numbers."""
        primary = self.model.io.primary_output
        per_case: dict[str, dict[str, float]] = {}
        agg: dict[str, list[float]] = {
            "max_abs_error": [],
            "sqnr_db": [],
            "cosine_min": [],
            "norm_ratio_dev": [],
        }
        task_values: list[float] = []
        triples, skipped = self._case_outputs(candidate)
        others: dict[str, dict[str, float]] = {}
        for case, ref_out, cand_out in triples:
            for name, values in _other_outputs(case, ref_out, cand_out, primary).items():
                seen = others.setdefault(name, {"sqnr_db": math.inf, "cosine_min": 1.0})
                others[name] = {k: min(seen[k], v) for k, v in values.items()}
            row = _row_metrics(case, ref_out[primary], cand_out[primary])
            for key, value in row.items():
                agg[key].append(value)
            task_values.append(self._task_value(case, ref_out, cand_out))
            per_case[case.name] = row | {"task_metric": task_values[-1]}
        for case, ref_out, cand_out in self._fixed_shape_triples(candidate):
            row = _row_metrics(case, ref_out[primary], cand_out[primary])
            for key, value in row.items():
                agg[key].append(value)
            per_case[case.name] = row
        result = {
            "max_abs_error": max(agg["max_abs_error"]),
            "sqnr_db": min(agg["sqnr_db"]),
            "cosine_min": min(agg["cosine_min"]),
            "norm_ratio_dev": max(agg["norm_ratio_dev"]),
        }
        task_metric = self._task_metric_name()
        if task_metric:
            result[task_metric] = min(task_values)
        if others:
            result["other_outputs_sqnr_db"] = min(v["sqnr_db"] for v in others.values())
            result["other_outputs_cosine_min"] = min(v["cosine_min"] for v in others.values())
        details: dict[str, Any] = {"cases": per_case, "text": self.text.origin, "other_outputs": others}
        if skipped:
            details["cases_not_applicable"] = skipped
        if self.model.io.kind == "decoder":
            lm_metrics, lm_details = self._lm_compare(candidate)
            result.update(lm_metrics)
            details.update(lm_details)
        return AccuracyResult(result, details)

    def _task_metric_name(self) -> str | None:
        return task_metric_name(self.model.task)

    def _task_value(self, case: Case, ref_out: dict, cand_out: dict) -> float:
        return task_value(self.model.task, case, ref_out, cand_out)

    def _lm_compare(self, candidate: Runnable) -> tuple[dict[str, float], dict[str, Any]]:
        cand = self._lm_measure(candidate)
        ref = self.ref_lm
        if len(cand["ids"]) < len(ref["ids"]):  # a smaller cache: compare on the same prefix
            count = len(cand["ids"])
            logits = ref["logits"][:count]
            ref = ref | {
                "ids": ref["ids"][:count],
                "logits": logits,
                "ppl": perplexity(logits, ref["ids"][:count]),
            }
        agreement = m.top1_agreement(ref["logits"], cand["logits"])
        delta = 100.0 * (cand["ppl"] - ref["ppl"]) / ref["ppl"]
        match = m.matching_prefix(ref["generated"], cand["generated"])
        metrics = {
            "next_token_agreement": agreement,
            "perplexity_delta_pct": delta,
            "perplexity_drop_pct": max(0.0, -delta),
            "generation_match": match / max(1, len(ref["generated"])),
            # decode path through the candidate's own cache, teacher-forced on the reference's
            # continuation: unlike the leading-run match, one early near-tie does not zero it
            "decode_agreement": m.top1_agreement(ref["decode_logits"], cand["decode_logits"]),
            "decode_sqnr_db": m.sqnr_db(ref["decode_logits"], cand["decode_logits"]),
        }
        details = {
            "reference_perplexity": ref["ppl"],
            "candidate_perplexity": cand["ppl"],
            "perplexity_tokens": len(ref["ids"]),
            "generated_tokens": len(ref["generated"]),
            "reference_generation": self._decode(ref["generated"]),
            "candidate_generation": self._decode(cand["generated"]),
        }
        return metrics, details

    def device_metrics(
        self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> dict[str, float]:
        """Score what a device returned for `feeds` against the PyTorch reference on the same feeds
        (`device_reference`, then `DeviceReference.score`)."""
        return self.device_reference(feeds).score(feeds, outputs)

    def device_reference(self, feeds: dict[str, np.ndarray]) -> DeviceReference:
        """What scoring a device's outputs for `feeds` needs from the PyTorch reference, and no more:
        a decoder's greedy continuation of the prompt (cached per prompt), or a graph model's
        primary output and the output its task metric reads, for exactly these feeds."""
        reference = self.model.reference()
        task, primary = self.model.task, self.model.io.primary_output
        if self.model.io.kind == "decoder":
            prompt = [int(t) for t in feeds["prompt_ids"].reshape(-1)]
            key = tuple(prompt)
            if key not in self._device_generations:
                session = session_for(reference, self.model.io.to_dict())
                self._device_generations[key] = greedy_generate(session, prompt, self.generate_tokens)
            return DeviceReference(task, primary, {}, list(self._device_generations[key]))
        ref_out = reference.run(feeds)
        keep = {primary, *task_outputs(task, ref_out)}
        return DeviceReference(task, primary, {k: np.asarray(ref_out[k]) for k in keep if k in ref_out})

    def _decode(self, ids: list[int]) -> str | list[int]:
        tok = self.model.tokenizer
        return tok.decode(ids) if tok is not None else ids
