"""One results table: each method's paper figures with ours beside them.

``python -m common.results [--exp-dir exp] [--markdown]`` (or ``make tables``).

Paper side: every folder of the repository with a ``paper_results.json`` is a method (no list to update). The
file holds::

    {"method": "qaconv", "unit": "percent" | "fraction", "metrics": ["rank1", "mAP"],
     "tables": {"<table id>": "<title>", ...}, "note": "...",
     "entries": [{"table": "<table id>", "row": "Market, 2.1", "train": "market", "test": "msmt",
                  "metric": "rank1", "value": 45.9, "source": "...",
                  "match": {"version": "2.1", ...},      # optional: args.json values a run must have
                  "result_key": "openreid_rank1",        # optional: key in results.json (default: metric)
                  "compare": false}, ...]}               # optional: a reference row no run of ours fills

Our side: every ``results.json`` under ``--exp-dir`` with an ``args.json`` beside it (what
:func:`common.run.setup_run` writes in ``<exp-dir>/<method>/<dataset>/<run-name>/``). The method is args.json's
``method``, the training set its ``args.dataset``; the final figures are results.json's bare ``<testset>`` keys
(fractions in [0, 1]; prefixed keys such as ``epoch20/market`` or ``untrained/market`` are not final). A run fills
the cell (row, test) of an entry when its method, training set and every ``match`` value agree and its
``results[test][result_key]`` is a number; when several runs fill a cell, the newest ``results.json`` wins. Each
run that fills a cell gets a footnote with its command (args.json ``argv``; ``torchrun --nproc_per_node N`` in
front when args.json records ``world_size`` N > 1) and the date of its results.json (UTC).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from common.errors import ReidError, run_main  # noqa: E402

PAPER_FILE = "paper_results.json"
REQUIRED = ("row", "train", "test", "metric", "value", "source")
DECIMALS = {"percent": 1, "fraction": 3}


# ----------------------------------------------------------------------------------------------- loading
def load_paper_tables(root: str = ROOT) -> Dict[str, Dict]:
    """``{method folder: parsed paper_results.json}`` for every ``<root>/<folder>/paper_results.json``."""
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "*", PAPER_FILE))):
        folder = os.path.basename(os.path.dirname(path))
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ReidError(f"cannot read {PAPER_FILE}: {e}", where=path, fix="fix the JSON syntax") from e
        if data.get("unit") not in DECIMALS:
            raise ReidError(f"'unit' must be one of {sorted(DECIMALS)}, not {data.get('unit')!r}", where=path,
                            fix='set "unit": "percent" or "fraction" (the unit of every "value")')
        for i, e in enumerate(data.get("entries", [])):
            missing = [k for k in REQUIRED if k not in e]
            if missing:
                raise ReidError(f"entry {i} lacks {', '.join(missing)}", where=path,
                                fix=f"every entry needs {', '.join(REQUIRED)}")
            if e["metric"] not in data.get("metrics", []):
                raise ReidError(f"entry {i}: metric {e['metric']!r} is not in 'metrics' {data.get('metrics')}",
                                where=path, fix="add it to 'metrics' (their order is the order inside a cell)")
        out[data.get("method", folder)] = data
    return out


@dataclass
class RunRecord:
    """One run folder: ``method``, training ``dataset``, resolved ``args``, ``argv``, ``results``, ``date``."""
    path: str
    method: str
    dataset: str
    args: Dict
    argv: List[str]
    results: Dict
    date: str
    mtime: float
    world_size: int = 1


def find_runs(exp_dir: str) -> List[RunRecord]:
    """Every run folder under ``exp_dir`` (any depth) holding both ``results.json`` and ``args.json``."""
    runs = []
    for dirpath, _, files in sorted(os.walk(exp_dir)):
        if "results.json" not in files or "args.json" not in files:
            continue
        try:
            with open(os.path.join(dirpath, "args.json")) as f:
                info = json.load(f)
            with open(os.path.join(dirpath, "results.json")) as f:
                results = json.load(f)
        except (OSError, ValueError):
            continue  # a run being written, or a broken one: not a result
        args = info.get("args", {})
        mtime = os.path.getmtime(os.path.join(dirpath, "results.json"))
        date = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime("%Y-%m-%d")
        runs.append(RunRecord(dirpath, info.get("method", ""), args.get("dataset", ""), args,
                              list(info.get("argv", [])), results, date, mtime, int(info.get("world_size", 1) or 1)))
    return runs


def run_command(run: RunRecord, root: str = ROOT) -> str:
    """The shell command of a run: ``python <script relative to root> <args>`` (torchrun in front if N > 1)."""
    if not run.argv:
        return "(args.json has no argv)"
    script = run.argv[0]
    if os.path.isabs(script) and os.path.commonpath([os.path.abspath(root), script]) == os.path.abspath(root):
        script = os.path.relpath(script, root)
    launcher = ["torchrun", f"--nproc_per_node={run.world_size}"] if run.world_size > 1 else ["python"]
    return shlex.join(launcher + [script] + run.argv[1:])


# ----------------------------------------------------------------------------------------------- matching
def our_value(entry: Dict, run: RunRecord, unit: str) -> Optional[float]:
    """Our figure for ``entry`` from ``run`` in the paper's ``unit``, or None when the run does not fill it."""
    if entry.get("compare", True) is False or run.dataset != entry["train"]:
        return None
    for key, want in entry.get("match", {}).items():
        if key not in run.args or run.args[key] != want:
            return None
    res = run.results.get(entry["test"])
    v = res.get(entry.get("result_key", entry["metric"])) if isinstance(res, dict) else None
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    return 100.0 * v if unit == "percent" else float(v)


@dataclass
class Table:
    """One paper table: ``rows`` = (train set, row label), ``tests`` columns,
    ``cells[(train, row, test)] = (paper text, ours text)``."""
    method: str
    title: str
    rows: List[Tuple[str, str]] = field(default_factory=list)
    tests: List[str] = field(default_factory=list)
    cells: Dict[Tuple[str, str, str], Tuple[str, str]] = field(default_factory=dict)


def _fmt(values: Dict[str, float], metrics: Sequence[str], unit: str) -> str:
    d = DECIMALS[unit]
    return " / ".join(f"{values[m]:.{d}f}" if m in values else "-" for m in metrics)


def build_tables(paper: Dict[str, Dict], runs: Sequence[RunRecord], root: str = ROOT):
    """Per method: its tables with our figures, its footnotes and its runs that fill no cell.

    Returns:
        list of ``(method, note, tables, footnotes, others)``: ``footnotes`` = [(number, run, command)] in order
        of first use; ``others`` = [(run, test, text, number)] for final results of runs that fill no entry
        (a run superseded by a newer one in every cell it fills is in neither).
    """
    out = []
    for method, data in paper.items():
        unit, metrics = data["unit"], data["metrics"]
        mruns = sorted((r for r in runs if r.method == method), key=lambda r: (r.mtime, r.path))
        tables: Dict[str, Table] = {}
        paper_vals: Dict[Tuple[str, str, str, str], Dict[str, float]] = {}
        best: Dict[Tuple[str, str, str, str], Tuple[RunRecord, Dict[str, float]]] = {}
        matched = set()  # runs that fill some entry (shown, or superseded by a newer run)
        for e in data["entries"]:
            tid = e.get("table", "")
            t = tables.setdefault(tid, Table(method, data.get("tables", {}).get(tid, tid or method)))
            if (e["train"], e["row"]) not in t.rows:
                t.rows.append((e["train"], e["row"]))
            if e["test"] not in t.tests:
                t.tests.append(e["test"])
            cell = (tid, e["train"], e["row"], e["test"])
            paper_vals.setdefault(cell, {})[e["metric"]] = e["value"]
            for r in mruns:  # oldest first: the newest run that fills the entry wins
                v = our_value(e, r, unit)
                if v is not None:
                    matched.add(r.path)
                    if cell not in best or best[cell][0].mtime <= r.mtime:
                        prev = best[cell][1] if cell in best and best[cell][0] is r else {}
                        best[cell] = (r, {**prev, e["metric"]: v})
        numbers: Dict[str, int] = {}
        footnotes = []

        def note_for(r: RunRecord) -> int:
            if r.path not in numbers:
                numbers[r.path] = len(numbers) + 1
                footnotes.append((numbers[r.path], r, run_command(r, root)))
            return numbers[r.path]

        for tid, t in tables.items():
            for train, row in t.rows:
                for test in t.tests:
                    cell = (tid, train, row, test)
                    if cell not in paper_vals:
                        continue
                    ours = ""
                    if cell in best:
                        r, vals = best[cell]
                        ours = f"{_fmt(vals, metrics, unit)} [{note_for(r)}]"
                    t.cells[(train, row, test)] = (_fmt(paper_vals[cell], metrics, unit), ours)
        others = []
        for r in mruns:
            if r.path in matched:
                continue
            for test, res in r.results.items():
                if "/" in test or test.startswith("_") or not isinstance(res, dict):
                    continue
                vals = {m: (100.0 * res[m] if unit == "percent" else res[m]) for m in metrics
                        if isinstance(res.get(m), (int, float))}
                if vals:
                    others.append((r, test, _fmt(vals, metrics, unit), note_for(r)))
        out.append((method, data.get("note", ""), list(tables.values()), footnotes, others))
    return out


# ----------------------------------------------------------------------------------------------- rendering
def cell_text(t: Table, train: str, row: str, test: str) -> str:
    """``paper`` or ``paper (ours X [n])``; '-' where the paper has no figure."""
    if (train, row, test) not in t.cells:
        return "-"
    p, o = t.cells[(train, row, test)]
    return f"{p} (ours {o})" if o else p


def _grid(t: Table) -> Tuple[List[str], List[List[str]]]:
    head = ["train", "row"] + t.tests
    return head, [[train, row] + [cell_text(t, train, row, test) for test in t.tests] for train, row in t.rows]


def render(built, markdown: bool = False, root: str = ROOT) -> str:
    """The tables of :func:`build_tables` as aligned text or as Markdown."""
    lines: List[str] = []
    for method, note, tables, footnotes, others in built:
        lines += [f"## {method}" if markdown else f"=== {method} ===", ""]
        if note:
            lines += [note, ""]
        for t in tables:
            head, body = _grid(t)
            lines.append(f"**{t.title}**" if markdown else t.title)
            if markdown:
                lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                lines += ["| " + " | ".join(r) + " |" for r in body]
            else:
                w = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
                lines += [" | ".join(c.ljust(w[i]) for i, c in enumerate(head)).rstrip(),
                          "-+-".join("-" * x for x in w)]
                lines += [" | ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in body]
            lines.append("")
        if others:
            lines.append("Runs that fill no paper cell:" if not markdown else "Runs that fill no paper cell:\n")
            for r, test, text, n in others:
                lines.append(f"{'- ' if markdown else '  '}{r.dataset} -> {test}: {text} [{n}]")
            lines.append("")
        if footnotes:
            for n, r, cmd in footnotes:
                inside = os.path.isabs(r.path) and os.path.commonpath([os.path.abspath(root), r.path]) == \
                    os.path.abspath(root)
                rel = os.path.relpath(r.path, root) if inside else r.path
                if markdown:
                    lines.append(f"[{n}] {r.date}: `{cmd}` (run folder `{rel}`)  ")
                else:
                    lines.append(f"[{n}] {r.date}  {cmd}  ({rel})")
        else:
            lines.append("(no runs of ours yet)")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m common.results", description=__doc__.split("\n")[0])
    parser.add_argument("--exp-dir", default="exp", help="folder holding the run folders (default: exp)")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables for the READMEs")
    parser.add_argument("--method", default="", help="only this method (folder name)")
    parser.add_argument("--root", default=ROOT, help="repository root holding <method>/paper_results.json")
    args = parser.parse_args(argv)
    paper = load_paper_tables(args.root)
    if args.method:
        if args.method not in paper:
            raise ReidError(f"no {PAPER_FILE} for method {args.method!r}",
                            fix=f"pick one of: {', '.join(paper) or '(none)'}")
        paper = {args.method: paper[args.method]}
    runs = find_runs(args.exp_dir) if os.path.isdir(args.exp_dir) else []
    text = render(build_tables(paper, runs, args.root), args.markdown, args.root)
    sys.stdout.write(text)
    return text


if __name__ == "__main__":
    run_main(main)
