"""The HTML page: header with key config, headline table, compare summary, figures as base64 data URIs, and
tables of sampled completions.

Every string that comes from a run (labels, config values, metric keys, notes, the summary table, and above
all the model's completions, which are untrusted text) is passed through `html.escape`; the page has inline
CSS only and no scripts or external references, so it opens offline.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from entropy_rl.report.data import HEADLINE_COLUMNS, RunData, headline
from entropy_rl.report.figures import Figure

__all__ = ["markdown_table_to_html", "render_page", "fmt", "CONFIG_FIELDS", "completions_section"]

# Completions shown per logged step, and the logged steps shown per run (the first and the last).
MAX_COMPLETIONS_PER_STEP = 16

# (column, dotted path in config.yaml) of the header's config table.
CONFIG_FIELDS: tuple[tuple[str, str], ...] = (
    ("method", "algorithm.method"),
    ("method_params", "algorithm.method_params"),
    ("advantage", "algorithm.advantage"),
    ("loss_agg_mode", "algorithm.loss_agg_mode"),
    ("task", "task.name"),
    ("task_params", "task.params"),
    ("steps", "train.steps"),
    ("seed", "train.seed"),
)

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
.note { background: #fff4e0; border-left: 4px solid #e69500; padding: 4px 10px; margin: 6px 0; }
.caption { color: #444; font-size: 0.9em; }
div.wide { overflow-x: auto; }
code { background: #f4f4f4; padding: 0 3px; }
td.txt { text-align: left; font-family: monospace; white-space: pre-wrap; word-break: break-all; max-width: 40em; }
span.tok { white-space: pre-wrap; }
"""


def e(text: Any) -> str:
    """HTML-escaped text of any value (quotes too)."""
    return html.escape(str(text), quote=True)


def fmt(v: Any) -> str:
    """A table cell value: floats to 4 significant digits, None as '-'."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def config_value(cfg: dict[str, Any], dotted: str) -> str:
    """The value at a dotted path of a config dict as compact text ('-' if absent)."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "-"
        node = node[part]
    return json.dumps(node, sort_keys=True) if isinstance(node, (dict, list)) else str(node)


def split_md_row(line: str) -> list[str]:
    """Cells of one markdown table row `| a | b |`; `\\|` is a literal bar inside a cell."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    cells, cur, i = [], "", 0
    while i < len(body):
        if body.startswith("\\|", i):
            cur, i = cur + "|", i + 2
        elif body[i] == "|":
            cells.append(cur.strip())
            cur, i = "", i + 1
        else:
            cur, i = cur + body[i], i + 1
    cells.append(cur.strip())
    return cells


def is_separator(cells: list[str]) -> bool:
    """Whether a row is the `|---|:---:|` line under a header."""
    return bool(cells) and all(c and set(c) <= set("-: ") and "-" in c for c in cells)


def markdown_table_to_html(md: str) -> str:
    """Convert the simple markdown tables `compare` writes (header, separator, rows) to escaped HTML.

    Lines that are not table rows become paragraphs; a table row before a separator line is a header row.
    """
    lines = [ln for ln in md.splitlines() if ln.strip()]
    out: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if table:
            out.append('<div class="wide"><table>\n' + "\n".join(table) + "\n</table></div>")
            table.clear()

    for j, line in enumerate(lines):
        if not line.strip().startswith("|"):
            flush()
            out.append(f"<p>{e(line.strip())}</p>")
            continue
        cells = split_md_row(line)
        if is_separator(cells):
            continue
        nxt = split_md_row(lines[j + 1]) if j + 1 < len(lines) and lines[j + 1].strip().startswith("|") else []
        tag = "th" if is_separator(nxt) else "td"
        table.append("<tr>" + "".join(f'<{tag} class="l">{e(c)}</{tag}>' if k == 0 else f"<{tag}>{e(c)}</{tag}>"
                                      for k, c in enumerate(cells)) + "</tr>")
    flush()
    return "\n".join(out)


def config_table(runs: list[RunData]) -> str:
    """One row per run: directory and the key config fields."""
    head = '<tr><th class="l">run</th><th class="l">directory</th>' + "".join(
        f'<th class="l">{e(name)}</th>' for name, _ in CONFIG_FIELDS) + "</tr>"
    rows = ["<tr>" + f'<td class="l">{e(run.label)}</td><td class="l"><code>{e(run.path)}</code></td>' + "".join(
        f'<td class="l">{e(config_value(run.config, path))}</td>' for _, path in CONFIG_FIELDS) + "</tr>"
        for run in runs]
    return '<div class="wide"><table>\n' + "\n".join([head, *rows]) + "\n</table></div>"


def headline_table(runs: list[RunData]) -> str:
    """One row per run of the headline numbers; each column header is its plain name and unit over the short key,
    with the definition as a tooltip and in the list below the table."""
    head = '<tr><th class="l">run</th>' + "".join(
        f'<th title="{e(doc)}">{e(name)}{f" ({e(unit)})" if unit else ""}<br><code>{e(key)}</code></th>'
        for key, name, unit, doc in HEADLINE_COLUMNS) + "</tr>"
    rows = []
    for run in runs:
        h = headline(run)
        rows.append(f'<tr><td class="l">{e(run.label)}</td>' +
                    "".join(f"<td>{e(fmt(h[key]))}</td>" for key, *_ in HEADLINE_COLUMNS) + "</tr>")
    legend = "".join(f"<li><code>{e(key)}</code> ({e(name)}{f', {unit}' if unit else ''}): {e(doc)}</li>"
                     for key, name, unit, doc in HEADLINE_COLUMNS)
    return ('<div class="wide"><table>\n' + "\n".join([head, *rows]) + "\n</table></div>\n"
            f'<details><summary class="caption">column definitions</summary><ul class="caption">{legend}</ul></details>')


def plain_table(header: list[str], rows: list[list[str]]) -> str:
    """An escaped HTML table of plain-text cells (the first column left-aligned)."""
    def row(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f'<{tag} class="l">{e(c)}</{tag}>' if i == 0 else f"<{tag}>{e(c)}</{tag}>"
                                for i, c in enumerate(cells)) + "</tr>"
    return ('<div class="wide"><table>\n' + "\n".join([row(header, "th"), *(row(r, "td") for r in rows)]) +
            "\n</table></div>")


def data_uri(png: Path) -> str:
    """The PNG file as a data: URI."""
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def figure_section(fig: Figure) -> str:
    """A figure's heading, embedded image (or a note saying it was skipped), caption and notes."""
    parts = [f"<h2>{e(fig.title)}</h2>"]
    if fig.png is not None:
        parts.append(f'<img src="{data_uri(fig.png)}" alt="{e(fig.title)}">')
        if fig.caption:
            parts.append(f'<p class="caption">{e(fig.caption)}</p>')
    else:
        parts.append('<p class="note">Figure skipped: no run has the data for it.</p>')
    if fig.table is not None:
        parts.append(plain_table(*fig.table))
    parts += [f'<p class="note">{e(note)}</p>' for note in fig.notes]
    return "\n".join(parts)


def _num(v: Any) -> float | None:
    """A logged number as float (None for text such as "nan" or a malformed value)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def token_spans(tokens: list[str], entropy: list[Any], h_max: float) -> str:
    """The response as escaped tokens, each shaded by its entropy (alpha = H / h_max) with H in the tooltip."""
    spans = []
    for tok, h in zip(tokens, entropy):
        value = _num(h)
        if value is None or not math.isfinite(value):
            spans.append(f'<span class="tok" title="H = {e(h)}">{e(tok)}</span>')
            continue
        alpha = min(1.0, max(0.0, value / h_max)) if h_max > 0 else 0.0
        spans.append(f'<span class="tok" style="background: rgba(228, 26, 28, {0.75 * alpha:.2f})" '
                     f'title="H = {value:.3f} nats">{e(tok)}</span>')
    return "".join(spans)


def completions_table(records: list[dict[str, Any]]) -> str:
    """One row per completion: step, reward, reason, advantage, mean token entropy, prompt, shaded response."""
    finite = [v for r in records for h in r["entropy"] if (v := _num(h)) is not None and math.isfinite(v)]
    h_max = max(finite, default=0.0)
    head = ("<tr><th>step</th><th>reward</th><th class=\"l\">reason</th><th>advantage</th>"
            "<th title=\"mean token entropy of the response (nats)\">mean H</th>"
            "<th class=\"l\">prompt</th><th class=\"l\">completion (shaded by token entropy)</th></tr>")
    rows = []
    for r in records:
        hs = [v for h in r["entropy"] if (v := _num(h)) is not None]
        shaded = len(r["tokens"]) == len(r["entropy"])
        text = token_spans(r["tokens"], r["entropy"], h_max) if shaded else e(r["completion"])
        reward, adv = (fmt(_num(v)) if _num(v) is not None else v for v in (r["reward"], r["advantage"]))
        rows.append(f'<tr><td>{e(r["step"])}</td><td>{e(reward)}</td><td class="l">{e(r["reason"])}</td>'
                    f"<td>{e(adv)}</td><td>{e(fmt(sum(hs) / len(hs) if hs else None))}</td>"
                    f'<td class="txt">{e(r["prompt"])}</td><td class="txt">{text}</td></tr>')
    return '<div class="wide"><table>\n' + "\n".join([head, *rows]) + "\n</table></div>"


def completions_section(runs: list[RunData]) -> str:
    """Per run (collapsible, the first open): the completions of the first and last logged step."""
    parts = ["<h2>Sample completions</h2>",
             '<p class="caption">What the policy generated: the first responses of the rollout batch at the first '
             "and last logged step (completions.jsonl), with the verifier's reward and reason, the advantage and the "
             "mean token entropy. Model text is shown escaped, as data. Token shading: pre-update entropy, darker = "
             "higher (scaled to the largest in the table); hover a token for its value in nats.</p>"]
    opened = False
    for run in runs:
        if not run.completions:
            parts.append(f'<p class="note">{e(run.label)}: no completions.jsonl '
                         "(train.log_completions_every = 0, or a run from before it was logged); skipped</p>")
            continue
        steps = sorted({r["step"] for r in run.completions})
        shown = [r for s in dict.fromkeys([steps[0], steps[-1]])
                 for r in [r for r in run.completions if r["step"] == s][:MAX_COMPLETIONS_PER_STEP]]
        title = f"{run.label}: steps {steps[0]} and {steps[-1]}" if len(steps) > 1 else f"{run.label}: step {steps[0]}"
        parts.append(f"<details{'' if opened else ' open'}><summary>{e(title)} ({len(shown)} completions)</summary>\n"
                     f"{completions_table(shown)}</details>")
        opened = True
    return "\n".join(parts)


def render_page(runs: list[RunData], figures: list[Figure], summary_md: str | None) -> str:
    """The whole self-contained HTML document."""
    title = "entropy-rl report: " + (runs[0].label if len(runs) == 1 else f"{len(runs)} runs")
    body = [f"<h1>{e(title)}</h1>", "<h2>Runs and configuration</h2>", config_table(runs)]
    body += [f'<p class="note">{e(run.label)}: {e(p)}</p>' for run in runs for p in run.problems]
    body += ["<h2>Headline numbers</h2>", headline_table(runs)]
    if summary_md:
        body += ["<h2>Comparison summary over seeds</h2>", markdown_table_to_html(summary_md)]
    body += [figure_section(fig) for fig in figures]
    body.append(completions_section(runs))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) +
            "\n</body>\n</html>\n")
