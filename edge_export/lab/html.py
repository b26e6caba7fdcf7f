"""report.html of a lab run: one self-contained file a person reads at a glance.

Everything is inline (CSS, SVG charts drawn in Python by lab/charts.py, a little JS to sort the
matrix), and a Content-Security-Policy forbids the browser any other load, so the file opens
offline, from a CI artifact or a mail, and never calls home. Sections: the run (id, time,
labels, counts per status); the matrix (model x recipe rows, device columns) with each failing
gate's text; a Pareto plot per model (size vs the model's main accuracy metric, latency as marker
area); latency distributions per device from every sample; each cell's p50 over the stored runs.
All user text (model names, labels, failure messages) is escaped.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_export.lab import reportdata as rd
from edge_export.lab.charts import (
    LatencySeries,
    ParetoPoint,
    TrendPoint,
    latency_chart,
    pareto_chart,
    trend_chart,
)
from edge_export.lab.reportdata import esc

Row = Mapping[str, Any]
STATUS_RANK = {"error": 0, "failed": 1, "not_run": 2, "passed": 3}  # worst first when sorting
TREND_RUNS = 30  # the latest runs drawn per cell: a year of nightly runs would be a smear
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1a1a1a;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd}
.meta{color:#555}.chip{display:inline-block;background:#eef;border-radius:10px;padding:0 8px;margin:2px}
.count{display:inline-block;border-radius:4px;padding:2px 10px;margin:4px 6px 0 0;color:#fff;font-weight:600}
.c-passed,.st-passed .badge{background:#2e7d32}.c-failed,.st-failed .badge{background:#c62828}
.c-error,.st-error .badge{background:#e65100}.c-not_run,.st-not_run .badge{background:#757575}
td.st-passed{background:#e8f5e9}td.st-failed{background:#ffebee}td.st-error{background:#fff3e0}
td.st-not_run{background:#f3f3f3}.scroll{overflow-x:auto}
table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f6f6f6;cursor:pointer;white-space:nowrap}th[data-dir=asc]::after{content:" ▲"}
th[data-dir=desc]::after{content:" ▼"}.badge{color:#fff;border-radius:3px;padding:0 6px;font-size:12px}
.why{margin:4px 0 0;padding-left:16px;font-size:12px;color:#7a1a1a;max-width:420px}.num{text-align:right}
.tag{font-size:11px;color:#555;border:1px solid #bbb;border-radius:3px;padding:0 3px}
.grid{display:flex;flex-wrap:wrap;gap:12px}.cap{font-size:12px;max-width:260px;overflow-wrap:anywhere}
svg.chart{background:#fff;display:block}svg .frame{fill:none;stroke:#ccc}svg .plot{fill:#fafafa;stroke:#ccc}
svg line.grid{stroke:#e4e4e4}svg text{font:11px system-ui,sans-serif;fill:#333}svg .title{font-weight:600;font-size:13px}
svg .note,svg .tick{fill:#666;font-size:10px}svg .axis{font-size:11px}svg .nodata{fill:#888;font-size:13px}
svg .small{font-size:11px}svg .front{fill:none;stroke:#222;stroke-dasharray:5 3;stroke-width:1.5}
svg .pt{fill-opacity:.75;stroke:#fff}svg .pt.front-pt{stroke:#111;stroke-width:2.5}
svg .pt.failed{fill-opacity:.3;stroke:#c62828;stroke-width:2;stroke-dasharray:3 2}svg .ptlabel{font-size:10px}
svg .box{fill:#fff;fill-opacity:.6;stroke-width:1.5}svg .whisker{stroke:#999}svg .median{stroke:#111;stroke-width:2}
svg .dot{fill-opacity:.55}svg .trend{fill:none;stroke:#1f77b4;stroke-width:1.5}svg .miss{stroke-width:2}
svg .tp.current{stroke:#111;stroke-width:2}#js-errors{color:#b00020}
"""

# Errors of any kind (script, a blocked or failed load, console.error) go into #js-errors, so a
# browser test can read them from the DOM; the first script to run, so it sees the others' errors.
HEAD_JS = """
window.labErrors=[];function labError(m){window.labErrors.push(String(m));
var el=document.getElementById('js-errors');if(el){el.textContent=window.labErrors.join('\\n');}}
window.addEventListener('error',function(e){labError(e.message||('failed to load '+
(e.target&&(e.target.src||e.target.href))));},true);
document.addEventListener('securitypolicyviolation',function(e){labError('blocked '+e.blockedURI);});
var labConsoleError=console.error;console.error=function(){labError(Array.prototype.join.call(arguments,' '));
return labConsoleError.apply(console,arguments);};
"""

# Click a header to sort the matrix; then record where each chart is drawn (data-chart-rects) and
# that the page ran clean (data-report-ready="ok"), for the browser test and for nothing else.
TAIL_JS = """
(function(){
function key(cell){var v=cell.getAttribute('data-sort');if(v===null){v=cell.textContent.trim();}
var n=Number(v);return v!==''&&!isNaN(n)?n:v.toLowerCase();}
document.querySelectorAll('table.sortable').forEach(function(table){
 var heads=table.querySelectorAll('th');
 heads.forEach(function(th,col){th.addEventListener('click',function(){
  var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
  var dir=th.getAttribute('data-dir')==='asc'?-1:1;
  heads.forEach(function(h){h.removeAttribute('data-dir');});th.setAttribute('data-dir',dir===1?'asc':'desc');
  rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
   if(typeof x!==typeof y){x=String(x);y=String(y);}return x<y?-dir:x>y?dir:0;});
  rows.forEach(function(r){body.appendChild(r);});});});});
var rects={};document.querySelectorAll('svg.chart').forEach(function(svg){var r=svg.getBoundingClientRect();
 rects[svg.id]=[Math.round(r.left+window.scrollX),Math.round(r.top+window.scrollY),Math.round(r.width),Math.round(r.height)];});
var root=document.documentElement;root.setAttribute('data-chart-rects',JSON.stringify(rects));
root.setAttribute('data-page-height',String(root.scrollHeight));
if(!window.labErrors.length){root.setAttribute('data-report-ready','ok');}
})();
"""


def write_html(path: Path, store_rows: list[dict], history: list[dict], run: dict) -> Path:
    """Write the report of one run (`store_rows`: its measurement rows; `history`: rows of earlier
    runs of the same cells; `run`: its store record) to `path`, atomically, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(render_html(store_rows, history, run), encoding="utf-8")
    temporary.replace(path)
    return path


def render_html(rows: list[dict], history: list[dict], run: dict) -> str:
    """The report as one HTML document (see the module docstring)."""
    run_id = str(run.get("run_id") or (rows[0].get("run_id") if rows else "") or "unknown run")
    body = [
        _header(rows, run, run_id),
        "<h2>Matrix</h2>",
        _matrix(rows),
        "<h2>Size vs accuracy vs latency</h2>",
        _paretos(rows),
        "<h2>Latency per device</h2>",
        _latencies(rows),
        "<h2>Trend over stored runs</h2>",
        _trends(rows, history, run_id),
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>edge-export lab: {esc(run_id)}</title><script>{HEAD_JS}</script><style>{CSS}</style>"
        f'</head><body><pre id="js-errors"></pre>{"".join(body)}<script>{TAIL_JS}</script></body></html>\n'
    )


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else str(value or "-")


def _ordered(values: Iterable[Any]) -> list[str]:
    """Unique values as strings, in order of first appearance (the matrix's stable order)."""
    return list(dict.fromkeys(str(v) for v in values))


def _header(rows: list[dict], run: dict, run_id: str) -> str:
    labels = run.get("labels") or (rows[0].get("labels") if rows else None) or {}
    counts = Counter(rd.status_of(row) for row in rows)
    pills = "".join(
        f'<span class="count c-{status}" id="count-{status}">{counts.get(status, 0)} {status.replace("_", " ")}</span>'
        for status in rd.STATUSES
    )
    chips = (
        "".join(f'<span class="chip">{esc(k)}={esc(v)}</span>' for k, v in sorted(labels.items())) or "none"
    )
    cached = sum(1 for row in rows if row.get("cached"))
    shard = f" · shard {esc(run['shard'])}" if run.get("shard") else ""
    facts = [("lab file", "lab_file"), ("host", "host"), ("edge-export", "edge_export_version")]
    where = "".join(f" · {name} {esc(run[key])}" for name, key in facts if run.get(key))
    sizes = (len(_ordered(r.get("model") for r in rows)), len(_ordered(r.get("recipe") for r in rows)),
             len(_ordered(r.get("device") for r in rows)))  # fmt: skip
    return (
        f"<h1>Device lab run {esc(run_id)}</h1>"
        f'<div class="meta">started {esc(_when(run.get("started_at")))} · finished '
        f"{esc(_when(run.get('finished_at')))} · run status {esc(run.get('status') or '-')}{shard}{where}<br>"
        f"{len(rows)} cells: {sizes[0]} models × {sizes[1]} recipes × {sizes[2]} devices · "
        f"{cached} cached exports · labels: {chips}</div><div>{pills}</div>"
    )


def _cell_html(row: Row) -> str:
    status = rd.status_of(row)
    p50 = rd.p50_ms(row)
    parts = [f'<span class="badge">{status.replace("_", " ")}</span>']
    if p50 is not None:
        parts.append(f" {p50:.4g} ms")
    if row.get("cached"):
        parts.append(' <span class="tag">cached</span>')
    lines = rd.failure_lines(row) if status in ("failed", "error") else []
    if status == "not_run":
        lines = [rd.not_run_reason(row)]
    if lines:
        parts.append('<ul class="why">' + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul>")
    return f'<td class="st-{status}" data-sort="{STATUS_RANK[status]}{p50 or 0:012.3f}">{"".join(parts)}</td>'


def _matrix(rows: list[dict]) -> str:
    if not rows:
        return '<p class="nodata">no data: this run recorded no cells</p>'
    devices = _ordered(r.get("device") for r in rows)
    by_pair: dict[tuple[str, str], dict[str, Row]] = {}
    for row in rows:
        by_pair.setdefault((str(row.get("model")), str(row.get("recipe"))), {})[str(row.get("device"))] = row
    metrics = {model: rd.main_metric(r for r in rows if str(r.get("model")) == model) for model, _ in by_pair}
    head = ["model", "recipe", "precision", "size (MB)", "accuracy", *devices]
    out = ['<div class="scroll"><table class="sortable" id="matrix"><thead><tr>']
    out += [f"<th>{esc(name)}</th>" for name in head]
    out.append("</tr></thead><tbody>")
    for (model, recipe), cells in by_pair.items():
        first = next(iter(cells.values()))
        size = _first(map(rd.size_bytes, cells.values()))
        chosen = metrics[model]
        value = _first(rd.metric_value(c, chosen[0]) for c in cells.values()) if chosen else None
        accuracy = f"{chosen[0]} {value:.6g}" if chosen and value is not None else "-"
        out.append(
            f"<tr><td>{esc(model)}</td><td>{esc(recipe)}</td><td>{esc(first.get('precision') or '-')}</td>"
            f'<td class="num" data-sort="{size or 0}">{f"{size / 1e6:.2f}" if size else "-"}</td>'
            f'<td data-sort="{value if value is not None else ""}">{esc(accuracy)}</td>'
        )
        out += [_cell_html(cells[d]) if d in cells else '<td data-sort="9">-</td>' for d in devices]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _first(values: Iterable[float | None]) -> float | None:
    """The first known value: size and host accuracy are per (model, recipe), on every device's row."""
    return next((value for value in values if value is not None), None)


def _worst(statuses: Iterable[str]) -> str:
    return min(statuses, key=lambda s: STATUS_RANK.get(s, 0), default="error")


def _paretos(rows: list[dict]) -> str:
    models = _ordered(r.get("model") for r in rows)
    if not models:
        return '<div class="grid">' + pareto_chart("pareto-0", "no cells", [], "", True, None) + "</div>"
    charts = []
    for index, model in enumerate(models):
        mine = [r for r in rows if str(r.get("model")) == model]
        chosen = rd.main_metric(mine)
        timed = Counter(str(r.get("device")) for r in mine if rd.p50_ms(r) is not None)
        device = max(timed, key=lambda d: (timed[d], -list(timed).index(d))) if timed else None
        metric, higher = chosen if chosen else ("accuracy", True)
        points = _pareto_points(mine, metric, device) if chosen else []
        charts.append(pareto_chart(f"pareto-{index}", f"{model}: {metric}", points, metric, higher, device))
    return '<div class="grid">' + "".join(charts) + "</div>"


def _pareto_points(rows: list[dict], metric: str, device: str | None) -> list[ParetoPoint]:
    """One point per recipe of a model that has both a size and a value of `metric`; its latency
    is the p50 on `device`, the tooltip lists every device's."""
    points = []
    for recipe in _ordered(r.get("recipe") for r in rows):
        cells = [r for r in rows if str(r.get("recipe")) == recipe]
        size = _first(map(rd.size_bytes, cells))
        value = _first(rd.metric_value(c, metric) for c in cells)
        if size is None or value is None:
            continue
        latency = _first(rd.p50_ms(c) for c in cells if str(c.get("device")) == device)
        timed = [(c.get("device"), rd.p50_ms(c)) for c in cells if rd.p50_ms(c) is not None]
        detail = "".join(f"\np50 on {name}: {p50:.4g} ms" for name, p50 in timed)
        target = str(cells[0].get("target") or recipe.split(":")[0])
        statuses = {rd.status_of(c) for c in cells}  # a device that dropped says nothing of the recipe
        status = "failed" if "failed" in statuses else "passed" if "passed" in statuses else _worst(statuses)
        points.append(ParetoPoint(recipe, target, size, value, latency, status, detail))
    return points


def _latencies(rows: list[dict]) -> str:
    devices = _ordered(r.get("device") for r in rows)
    if not devices:
        return latency_chart("latency-0", "no devices", [])
    charts = []
    for index, device in enumerate(devices):
        series = []
        for row in (r for r in rows if str(r.get("device")) == device):
            status = rd.status_of(row)
            reason = "not run" if status == "not_run" else f"no data ({status.replace('_', ' ')})"
            label = f"{row.get('model')} · {row.get('recipe')}"
            series.append(LatencySeries(label, rd.samples_ms(row), status, reason))
        charts.append(latency_chart(f"latency-{index}", f"device {device}", series))
    return "".join(charts)


def _trends(rows: list[dict], history: list[dict], run_id: str) -> str:
    if not rows:
        return '<div class="grid">' + trend_chart("trend-0", "no cells", []) + "</div>"
    by_cell: dict[str, dict[str, Row]] = {}
    for row in [*history, *rows]:  # this run's rows last: they win over a stale copy in history
        by_cell.setdefault(_cell_id(row), {})[str(row.get("run_id"))] = row
    tiles = []
    for index, row in enumerate(rows):
        cell = _cell_id(row)
        runs = sorted(by_cell[cell].values(), key=lambda r: _when(r.get("time")))[-TREND_RUNS:]
        points = [TrendPoint(str(r.get("run_id")), _when(r.get("time")), rd.p50_ms(r), rd.status_of(r),
                             str(r.get("run_id")) == run_id) for r in runs]  # fmt: skip
        caption = esc(cell) + _change(points)
        tiles.append(
            f'<div><div class="cap">{caption}</div>{trend_chart(f"trend-{index}", cell, points)}</div>'
        )
    return '<div class="grid">' + "".join(tiles) + "</div>"


def _cell_id(row: Row) -> str:
    return str(row.get("cell") or f"{row.get('model')}|{row.get('recipe')}|{row.get('device')}")


def _change(points: list[TrendPoint]) -> str:
    """' 12.3 ms, +8% vs the previous run' for a caption, when both runs have a p50."""
    timed = [p for p in points if p.p50_ms is not None]
    if len(timed) < 2 or not timed[-1].current or not timed[-2].p50_ms:
        return ""
    ratio = timed[-1].p50_ms / timed[-2].p50_ms - 1
    return f' <span class="tag">{timed[-1].p50_ms:.4g} ms, {ratio:+.0%} vs previous</span>'
