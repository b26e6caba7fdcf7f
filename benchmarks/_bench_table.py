"""Goals and the plain-text side-by-side table of the ONNX benchmark."""

from __future__ import annotations

from dataclasses import dataclass

from _bench_common import MIB, Row

EE, OPT = "edge-export", "optimum"
SPEED = {"encoder": ("p50_ms", "p50 ms"), "decoder": ("tokens_per_s", "tok/s")}


@dataclass(frozen=True)
class Goal:
    """One target ratio: `ratio` must be <= `limit` (upper) or >= `limit` (lower)."""

    name: str
    ratio: float | None
    limit: float
    upper: bool
    detail: str

    @property
    def verdict(self) -> str:
        """PASS, FAIL, or n/a when a number is missing."""
        if self.ratio is None:
            return "n/a"
        ok = self.ratio <= self.limit if self.upper else self.ratio >= self.limit
        return "PASS" if ok else "FAIL"


def find(rows: list[Row], model: str, tool: str, precision: str) -> Row | None:
    """The row for (model, tool, precision), if any."""
    return next((r for r in rows if (r.model, r.tool, r.precision) == (model, tool, precision)), None)


def _value(row: Row | None, field: str) -> float | None:
    """A row's number: a Row attribute (wall_s, size_bytes, ...) or one of its metrics."""
    if row is None or row.status not in {"ok", "gate-failed"}:
        return None
    value = getattr(row, field) if hasattr(row, field) else row.metrics.get(field)
    return None if value is None else float(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _goal(name: str, a: float | None, b: float | None, limit: float, upper: bool) -> Goal:
    sign = "<=" if upper else ">="
    shown = "?" if a is None or b is None else f"{a:.4g} / {b:.4g}"
    return Goal(name, _ratio(a, b), limit, upper, f"{shown}, goal {sign} {limit:g}x")


def goals(rows: list[Row], kinds: dict[str, str]) -> list[Goal]:
    """The project's goals against Optimum and for int4, from the measured rows."""
    out: list[Goal] = []
    for model, kind in kinds.items():
        for precision in ("fp32", "int8"):
            ee, opt = find(rows, model, EE, precision), find(rows, model, OPT, precision)
            wall = (_value(ee, "wall_s"), _value(opt, "wall_s"))
            out.append(_goal(f"{model} {precision} export wall: ee/optimum", *wall, 1.0, True))
        ee, opt = find(rows, model, EE, "int8"), find(rows, model, OPT, "int8")
        key = SPEED[kind][0]
        speed = (_value(ee, key), _value(opt, key))
        if kind == "encoder":
            out.append(_goal(f"{model} int8 p50 latency: ee/optimum", *speed, 1.0, True))
        else:
            out.append(_goal(f"{model} int8 decode tok/s: ee/optimum", *speed, 1.0, False))
    if kinds.get("smollm2") == "decoder":
        int4, fp32 = find(rows, "smollm2", EE, "int4"), find(rows, "smollm2", EE, "fp32")
        size = (_value(int4, "size_bytes"), _value(fp32, "size_bytes"))
        out.append(_goal("smollm2 ee int4 size / ee fp32 size", *size, 0.3, True))
        tps = (_value(int4, "tokens_per_s"), _value(fp32, "tokens_per_s"))
        out.append(_goal("smollm2 ee int4 tok/s / ee fp32 tok/s", *tps, 1.5, False))
    return out


def _pair(
    ee: Row | None, opt: Row | None, field: str, fmt: str, scale: float = 1.0, ratio: bool = False
) -> list[str]:
    """The edge-export and Optimum cells of one field, plus their ratio cell when asked."""
    cells = [_cell(ee, field, fmt, scale), _cell(opt, field, fmt, scale)]
    if ratio:
        value = _ratio(_value(ee, field), _value(opt, field))
        cells.append("-" if value is None else f"{value:.2f}x")
    return cells


def _cell(row: Row | None, field: str, fmt: str, scale: float = 1.0) -> str:
    if row is None:
        return "-"
    if row.status in {"n/a", "error"}:
        return "n/a" if row.status == "n/a" else "ERROR"
    value = _value(row, field)
    return "-" if value is None else format(value / scale, fmt)


def _quality(row: Row | None, kind: str) -> str:
    if row is None or not row.metrics:
        return "-"
    if kind == "encoder":
        cos = row.metrics.get("cosine_vs_torch")
        return "-" if cos is None else f"cos {cos:.5f}"
    agree, match = row.metrics.get("top1_agreement"), row.metrics.get("greedy_match")
    if agree is None or match is None:
        return "-"
    return f"{agree:.0%} ({match}/{row.metrics['generated']})"


def model_table(rows: list[Row], model: str, kind: str) -> str:
    """Side-by-side table of one model: edge-export vs Optimum per precision."""
    key, label = SPEED[kind]
    quality = "cos vs torch" if kind == "encoder" else "top-1 vs torch (greedy prefix)"
    header = ["precision", "export s", "", "ratio", "peak RSS MiB", "", "size MiB", ""]
    header += [label, "", "ratio", quality, ""]
    sub = ["", EE, OPT, "ee/opt", EE, OPT, EE, OPT, EE, OPT, "ee/opt", EE, OPT]
    lines = [header, sub]
    for precision in ("fp32", "int8", "int4"):
        ee, opt = find(rows, model, EE, precision), find(rows, model, OPT, precision)
        if ee is None and opt is None:
            continue
        lines.append(
            [
                precision,
                *_pair(ee, opt, "wall_s", ".1f", ratio=True),
                *_pair(ee, opt, "peak_rss_mib", ".0f"),
                *_pair(ee, opt, "size_bytes", ".1f", MIB),
                *_pair(ee, opt, key, ".2f", ratio=True),
                _quality(ee, kind),
                _quality(opt, kind),
            ]
        )
    return _format_grid(lines)


def _format_grid(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    text.insert(2, "-" * len(text[0]))
    return "\n".join(t.rstrip() for t in text)


def render(rows: list[Row], kinds: dict[str, str], footnotes: list[str]) -> str:
    """The full report: one table per model, the goals, notes per row, and footnotes."""
    parts = []
    for model, kind in kinds.items():
        parts += [f"== {model} ==", model_table(rows, model, kind), ""]
    parts.append("Goals")
    for goal in goals(rows, kinds):
        ratio = "-" if goal.ratio is None else f"{goal.ratio:.2f}x"
        parts.append(f"  [{goal.verdict:4}] {goal.name} = {ratio} ({goal.detail})")
    notes = [f"  {r.tool} {r.model} {r.precision}: {n}" for r in rows for n in r.notes]
    if notes:
        parts += ["", "Notes", *notes]
    parts += ["", "Footnotes", *(f"  [{i}] {f}" for i, f in enumerate(footnotes, 1))]
    return "\n".join(parts)


# --- ExecuTorch benchmark (executorch_vs_optimum.py) -------------------------------------------

ET_MODEL = "smollm2"
ET_RECIPES = ("fp32", "8da4w")


def executorch_goals(rows: list[Row], greedy_len: int) -> list[Goal]:
    """Goals of the ExecuTorch benchmark: export wall, decode speed, 8da4w size, fp32 greedy sanity."""
    out: list[Goal] = []
    for recipe in ET_RECIPES:
        ee, opt = find(rows, ET_MODEL, EE, recipe), find(rows, ET_MODEL, OPT, recipe)
        wall = (_value(ee, "wall_s"), _value(opt, "wall_s"))
        out.append(_goal(f"{recipe} export wall: ee/optimum", *wall, 1.0, True))
    for recipe in ET_RECIPES:
        ee, opt = find(rows, ET_MODEL, EE, recipe), find(rows, ET_MODEL, OPT, recipe)
        tps = (_value(ee, "tokens_per_s"), _value(opt, "tokens_per_s"))
        out.append(_goal(f"{recipe} decode tok/s: ee/optimum", *tps, 1.0, False))
    q4, fp32 = find(rows, ET_MODEL, EE, "8da4w"), find(rows, ET_MODEL, EE, "fp32")
    size = (_value(q4, "size_bytes"), _value(fp32, "size_bytes"))
    out.append(_goal("ee 8da4w .pte / ee fp32 .pte", *size, 0.3, True))
    ee, opt = find(rows, ET_MODEL, EE, "fp32"), find(rows, ET_MODEL, OPT, "fp32")
    same = None
    if ee is not None and opt is not None:
        a, b = ee.metrics.get("greedy_tokens"), opt.metrics.get("greedy_tokens")
        if a and b:
            same = float(common_prefix(a[:greedy_len], b[:greedy_len]))
    out.append(
        _goal(f"fp32 first {greedy_len} greedy tokens ee == optimum", same, float(greedy_len), 1.0, False)
    )
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    """Number of leading items equal in `a` and `b`."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _greedy_cell(row: Row | None) -> str:
    if row is None or row.metrics.get("greedy_match_torch") is None:
        return "-"
    return f"{row.metrics['greedy_match_torch']}/{row.metrics['greedy_len']}"


def executorch_table(rows: list[Row]) -> str:
    """Side-by-side table: edge-export vs Optimum per ExecuTorch recipe."""
    header = ["recipe", "export s", "", "ratio", "peak RSS MiB", "", ".pte MiB", "", "TTFT ms", ""]
    header += ["ratio", "decode tok/s", "", "ratio", "greedy = torch", ""]
    sub = ["", EE, OPT, "ee/opt", EE, OPT, EE, OPT, EE, OPT, "ee/opt", EE, OPT, "ee/opt", EE, OPT]
    lines = [header, sub]
    for recipe in ET_RECIPES:
        ee, opt = find(rows, ET_MODEL, EE, recipe), find(rows, ET_MODEL, OPT, recipe)
        if ee is None and opt is None:
            continue
        lines.append(
            [
                recipe,
                *_pair(ee, opt, "wall_s", ".1f", ratio=True),
                *_pair(ee, opt, "peak_rss_mib", ".0f"),
                *_pair(ee, opt, "size_bytes", ".1f", MIB),
                *_pair(ee, opt, "ttft_ms", ".1f", ratio=True),
                *_pair(ee, opt, "tokens_per_s", ".2f", ratio=True),
                _greedy_cell(ee),
                _greedy_cell(opt),
            ]
        )
    return _format_grid(lines)


def render_executorch(rows: list[Row], greedy_len: int, extra: list[str], footnotes: list[str]) -> str:
    """The full ExecuTorch report: table, goals, extra sections, notes per row, footnotes."""
    parts = [f"== {ET_MODEL} (ExecuTorch, XNNPACK) ==", executorch_table(rows), "", "Goals"]
    for goal in executorch_goals(rows, greedy_len):
        ratio = "-" if goal.ratio is None else f"{goal.ratio:.2f}x"
        parts.append(f"  [{goal.verdict:4}] {goal.name} = {ratio} ({goal.detail})")
    if extra:
        parts += ["", *extra]
    notes = [f"  {r.tool} {r.precision}: {n}" for r in rows for n in r.notes]
    if notes:
        parts += ["", "Notes", *notes]
    parts += ["", "Footnotes", *(f"  [{i}] {f}" for i, f in enumerate(footnotes, 1))]
    return "\n".join(parts)


# --- TFLite benchmark (tflite_vs_litert.py) ----------------------------------------------------

BARE = "litert-torch"
TFL_WALL_LIMIT = 1.10  # edge-export's export wall time vs the bare litert-torch call
TFL_SIZE_LIMIT = 0.3  # edge-export int4 .tflite vs its fp32 .tflite
# (field, label, format, scale, ratio column) per model kind; the last rows carry no ratio.
TFL_METRICS = {
    "encoder": [
        ("wall_s", "export s", ".1f", 1.0, True),
        ("peak_rss_mib", "peak RSS MiB", ".0f", 1.0, True),
        ("size_bytes", ".tflite MiB", ".1f", MIB, True),
        ("p50_ms", "p50 ms (seq_128)", ".2f", 1.0, True),
        ("cosine_vs_torch", "cos vs torch", ".5f", 1.0, False),
    ],
    "decoder": [
        ("wall_s", "export s", ".1f", 1.0, True),
        ("peak_rss_mib", "peak RSS MiB", ".0f", 1.0, True),
        ("size_bytes", ".tflite MiB", ".1f", MIB, True),
        ("ttft_ms", "TTFT ms", ".1f", 1.0, True),
        ("tokens_per_s", "decode tok/s", ".2f", 1.0, True),
        ("greedy_match_torch", "greedy prefix = torch", ".0f", 1.0, False),
    ],
}


def tflite_goals(
    rows: list[Row], kinds: dict[str, str], recipes: list[str], tolerance: float, greedy_len: int
) -> dict[tuple[str, str, str], Goal]:
    """(model, recipe, field) -> goal: export wall <= 1.10x bare, runtime speed identical to the
    bare file's within `tolerance` or better, int4 file <= 0.3x fp32, fp32 greedy tokens equal."""
    out: dict[tuple[str, str, str], Goal] = {}
    for model, kind in kinds.items():
        for recipe in recipes:
            ee, bare = find(rows, model, EE, recipe), find(rows, model, BARE, recipe)
            checks = [("wall_s", "export wall", TFL_WALL_LIMIT, True)]
            if kind == "encoder":
                checks.append(("p50_ms", "p50 latency", 1.0 + tolerance, True))
            else:
                checks.append(("ttft_ms", "TTFT", 1.0 + tolerance, True))
                checks.append(("tokens_per_s", "decode tok/s", 1.0 - tolerance, False))
            for field, label, limit, upper in checks:
                name = f"{model} {recipe} {label}: ee/bare"
                out[(model, recipe, field)] = _goal(
                    name, _value(ee, field), _value(bare, field), limit, upper
                )
        if "int4" in recipes and "fp32" in recipes:
            q4, fp32 = find(rows, model, EE, "int4"), find(rows, model, EE, "fp32")
            size = (_value(q4, "size_bytes"), _value(fp32, "size_bytes"))
            out[(model, "int4", "size_bytes")] = _goal(
                f"{model} ee int4 .tflite / ee fp32 .tflite", *size, TFL_SIZE_LIMIT, True
            )
        if kind == "decoder" and "fp32" in recipes:
            ee, bare = find(rows, model, EE, "fp32"), find(rows, model, BARE, "fp32")
            same = None
            if ee is not None and bare is not None:
                a, b = ee.metrics.get("greedy_tokens"), bare.metrics.get("greedy_tokens")
                if a and b:
                    same = float(common_prefix(a[:greedy_len], b[:greedy_len]))
            name = f"{model} fp32 first {greedy_len} greedy tokens ee == bare"
            out[(model, "fp32", "greedy_match_torch")] = _goal(name, same, float(greedy_len), 1.0, False)
    return out


def _goal_cell(goal: Goal | None, field: str) -> str:
    if goal is None:
        return ""
    sign = "<=" if goal.upper else ">="
    if field == "size_bytes":
        return f"ee int4/fp32 {sign} {goal.limit:g}x"
    if field == "greedy_match_torch":
        return "ee tokens == bare tokens"
    return f"ee/bare {sign} {goal.limit:g}x"


def _verdict_cell(goal: Goal | None, field: str) -> str:
    if goal is None:
        return ""
    if goal.ratio is None or field != "size_bytes":
        return goal.verdict
    return f"{goal.verdict} ({goal.ratio:.2f}x)"


def markdown_grid(lines: list[list[str]]) -> str:
    """A markdown table (first line = header) with aligned columns."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines]
    text.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(text)


def tflite_table(
    rows: list[Row], model: str, kind: str, recipes: list[str], goals: dict[tuple[str, str, str], Goal]
) -> str:
    """One model: a line per (recipe, metric) with both tools, their ratio, the goal and its verdict."""
    lines = [["recipe", "metric", EE, BARE, "ee/bare", "goal", "verdict"]]
    for recipe in recipes:
        ee, bare = find(rows, model, EE, recipe), find(rows, model, BARE, recipe)
        if ee is None and bare is None:
            continue
        for field, label, fmt, scale, ratio in TFL_METRICS[kind]:
            cells = _pair(ee, bare, field, fmt, scale, ratio) + ([] if ratio else [""])
            goal = goals.get((model, recipe, field))
            lines.append([recipe, label, *cells, _goal_cell(goal, field), _verdict_cell(goal, field)])
    return markdown_grid(lines)


def render_tflite(
    rows: list[Row],
    kinds: dict[str, str],
    recipes: list[str],
    goals: dict[tuple[str, str, str], Goal],
    extra: list[str],
    footnotes: list[str],
) -> str:
    """The full TFLite report as markdown: a table per model, the goals, extra sections (verbatim),
    notes per row, footnotes."""
    parts = []
    for model, kind in kinds.items():
        parts += [f"### {model}", "", tflite_table(rows, model, kind, recipes, goals), ""]
    parts += ["### Goals", ""]
    for goal in goals.values():
        shown = "-" if goal.ratio is None else f"{goal.ratio:.2f}x"
        parts.append(f"- **{goal.verdict}** {goal.name} = {shown} ({goal.detail})")
    if extra:
        parts += ["", "```", *extra, "```"]
    row_notes = [f"- {r.tool} {r.model} {r.precision}: {note}" for r in rows for note in r.notes]
    if row_notes:
        parts += ["", "### Notes", "", *row_notes]
    parts += ["", "### Footnotes", "", *(f"{i}. {text}" for i, text in enumerate(footnotes, 1))]
    return "\n".join(parts)
