"""common/results.py: paper tables as data, our runs beside them (fake run folders, hand-written expected tables)."""
import calendar
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

from common import results as R
from common.errors import ReidError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TOY = {
    "method": "toy", "unit": "percent", "metrics": ["rank1", "mAP"],
    "tables": {"main": "Toy paper (rank-1 / mAP, %)"},
    "note": "toy note",
    "entries": [
        {"table": "main", "row": "v2", "train": "market", "test": "duke", "metric": "rank1", "value": 50.0,
         "match": {"version": "2"}, "source": "toy paper, table 1"},
        {"table": "main", "row": "v2", "train": "market", "test": "duke", "metric": "mAP", "value": 30.0,
         "match": {"version": "2"}, "source": "toy paper, table 1"},
        {"table": "main", "row": "v2", "train": "market", "test": "msmt", "metric": "rank1", "value": 20.0,
         "match": {"version": "2"}, "source": "toy paper, table 1"},
        {"table": "main", "row": "v2 + RR", "train": "market", "test": "duke", "metric": "rank1", "value": 60.0,
         "result_key": "rank1_rerank", "match": {"version": "2"}, "source": "toy paper, table 1"},
        {"table": "main", "row": "v2", "train": "duke", "test": "market", "metric": "mAP", "value": 40.0,
         "match": {"version": "2"}, "source": "toy paper, table 1"},
        {"table": "main", "row": "other method", "train": "market", "test": "duke", "metric": "rank1",
         "value": 70.0, "compare": False, "source": "another paper"},
    ],
}


def _stamp(day: int) -> float:
    return calendar.timegm((2026, 11, day, 12, 0, 0))


def make_run(exp, method, dataset, name, args, argv, results, day, world_size=None, with_args=True):
    d = os.path.join(exp, method, dataset, name)
    os.makedirs(d)
    info = {"args": {"dataset": dataset, **args}, "argv": argv, "method": method}
    if world_size is not None:
        info["world_size"] = world_size
    if with_args:
        with open(os.path.join(d, "args.json"), "w") as f:
            json.dump(info, f)
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(results, f)
    os.utime(os.path.join(d, "results.json"), (_stamp(day), _stamp(day)))
    return d


class FakeTree(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = os.path.join(self._tmp.name, "repo")
        self.exp = os.path.join(self._tmp.name, "exp")
        os.makedirs(os.path.join(self.root, "toy"))
        os.makedirs(os.path.join(self.root, "nopaper"))
        with open(os.path.join(self.root, "toy", "paper_results.json"), "w") as f:
            json.dump(TOY, f)
        script = os.path.join(self.root, "toy", "main.py")
        # older run filling (market, v2, duke): superseded by the newer one below
        make_run(self.exp, "toy", "market", "old", {"version": "2"}, [script, "--dataset", "market", "--seed", "1"],
                 {"duke": {"rank1": 0.1, "mAP": 0.05}}, day=20)
        make_run(self.exp, "toy", "market", "new", {"version": "2"},
                 [script, "--dataset", "market", "--run-name", "new run"],
                 {"duke": {"rank1": 0.523, "mAP": 0.3125, "rank1_rerank": 0.611},
                  "epoch3/duke": {"rank1": 0.9, "mAP": 0.9}, "untrained/msmt": {"rank1": 0.9}, "_meta": {"hours": 1}},
                 day=25, world_size=2)
        # version mismatch: fills no cell, listed among the other runs
        make_run(self.exp, "toy", "market", "v1", {"version": "1"}, [script, "--version", "1"],
                 {"duke": {"rank1": 0.4, "mAP": 0.2}, "epoch8/duke": {"rank1": 0.3, "mAP": 0.1}}, day=21)
        make_run(self.exp, "toy", "duke", "d", {"version": "2"}, [script, "--dataset", "duke"],
                 {"market": {"rank1": 0.7, "mAP": 0.45678}}, day=22)
        # ignored: no paper JSON for the method; no args.json beside results.json
        make_run(self.exp, "nopaper", "market", "x", {}, ["nopaper/main.py"], {"duke": {"rank1": 0.5}}, day=23)
        make_run(self.exp, "toy", "market", "noargs", {"version": "2"}, [], {"msmt": {"rank1": 0.99}}, day=28,
                 with_args=False)

    def tearDown(self):
        self._tmp.cleanup()

    def text(self, markdown=False):
        return R.render(R.build_tables(R.load_paper_tables(self.root), R.find_runs(self.exp), self.root),
                        markdown, self.root)

    def test_text_table(self):
        # Hand-computed: newest run (day 25) wins the (market, v2, duke) cell: 52.3 / 31.25 -> '31.2'
        # (round-half-even of 31.25 in '%.1f'); rerank row from rank1_rerank 0.611 -> 61.1; the msmt cell has only
        # rank-1 in the paper and no final msmt result in any run (untrained/msmt is not final); the duke-trained
        # run fills (duke, v2, market) mAP 45.678 -> 45.7; 'other method' is compare: false.
        rows = [
            ("train", "row", "duke", "msmt", "market"),
            ("market", "v2", "50.0 / 30.0 (ours 52.3 / 31.2 [1])", "20.0 / -", "-"),
            ("market", "v2 + RR", "60.0 / - (ours 61.1 / - [1])", "-", "-"),
            ("duke", "v2", "-", "-", "- / 40.0 (ours - / 45.7 [2])"),
            ("market", "other method", "70.0 / -", "-", "-"),
        ]
        w = [max(len(r[i]) for r in rows) for i in range(5)]
        grid = [" | ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows]
        grid.insert(1, "-+-".join("-" * x for x in w))
        script = "toy/main.py"
        expected = "\n".join([
            "=== toy ===", "", "toy note", "", "Toy paper (rank-1 / mAP, %)", *grid, "",
            "Runs that fill no paper cell:",
            "  market -> duke: 40.0 / 20.0 [3]",
            "",
            "[1] 2026-11-25  torchrun --nproc_per_node=2 " + script + " --dataset market --run-name 'new run'  "
            f"({self.exp}/toy/market/new)",
            "[2] 2026-11-22  python " + script + " --dataset duke  (" + self.exp + "/toy/duke/d)",
            "[3] 2026-11-21  python " + script + " --version 1  (" + self.exp + "/toy/market/v1)",
        ]) + "\n"
        self.assertEqual(self.text(), expected)

    def test_markdown_table(self):
        out = self.text(markdown=True)
        self.assertIn("| train | row | duke | msmt | market |\n|---|---|---|---|---|\n"
                      "| market | v2 | 50.0 / 30.0 (ours 52.3 / 31.2 [1]) | 20.0 / - | - |\n"
                      "| market | v2 + RR | 60.0 / - (ours 61.1 / - [1]) | - | - |\n"
                      "| duke | v2 | - | - | - / 40.0 (ours - / 45.7 [2]) |\n"
                      "| market | other method | 70.0 / - | - | - |\n", out)
        self.assertIn(f"[2] 2026-11-22: `python toy/main.py --dataset duke` (run folder `{self.exp}/toy/duke/d`)", out)
        self.assertTrue(out.startswith("## toy\n"))

    def test_newest_run_wins_and_mismatch_is_excluded(self):
        paper = R.load_paper_tables(self.root)
        (_, _, tables, footnotes, others), = R.build_tables(paper, R.find_runs(self.exp), self.root)
        self.assertEqual(tables[0].cells[("market", "v2", "duke")], ("50.0 / 30.0", "52.3 / 31.2 [1]"))
        self.assertEqual([os.path.basename(r.path) for _, r, _ in footnotes], ["new", "d", "v1"])
        self.assertEqual([(os.path.basename(r.path), t) for r, t, _, _ in others], [("v1", "duke")])

    def test_run_folder_inside_the_repository_is_relative(self):
        run = R.RunRecord(os.path.join(self.root, "exp", "toy", "market", "r"), "toy", "market", {"version": "2"},
                          [os.path.join(self.root, "toy", "main.py")], {"duke": {"rank1": 0.5}}, "2026-11-02", 1.0)
        text = R.render(R.build_tables(R.load_paper_tables(self.root), [run], self.root), False, self.root)
        self.assertIn("[1] 2026-11-02  python toy/main.py  (exp/toy/market/r)", text)

    def test_fraction_unit(self):
        paper = {"bot": {"method": "bot", "unit": "fraction", "metrics": ["rank1", "mAP"], "entries": [
            {"row": "paper", "train": "market", "test": "market", "metric": "rank1", "value": 0.941, "source": "s"},
            {"row": "paper", "train": "market", "test": "market", "metric": "mAP", "value": 0.857, "source": "s"}]}}
        run = R.RunRecord("/x/bot/market/r", "bot", "market", {}, ["bot/main.py"],
                          {"market": {"rank1": 0.93251, "mAP": 0.8}}, "2026-11-01", 1.0)
        (_, _, tables, _, _), = R.build_tables(paper, [run], "/x")
        self.assertEqual(tables[0].cells[("market", "paper", "market")], ("0.941 / 0.857", "0.933 / 0.800 [1]"))

    def test_discovers_any_method_folder(self):
        other = dict(TOY, method="newmethod", entries=TOY["entries"][:1])
        os.makedirs(os.path.join(self.root, "newmethod"))
        with open(os.path.join(self.root, "newmethod", "paper_results.json"), "w") as f:
            json.dump(other, f)
        self.assertEqual(list(R.load_paper_tables(self.root)), ["newmethod", "toy"])

    def test_malformed_paper_file(self):
        with open(os.path.join(self.root, "toy", "paper_results.json"), "w") as f:
            json.dump(dict(TOY, entries=[{"row": "a", "train": "market"}]), f)
        with self.assertRaises(ReidError) as cm:
            R.load_paper_tables(self.root)
        self.assertIn("lacks test, metric, value, source", cm.exception.what)

    def test_cli(self):
        p = subprocess.run([sys.executable, "-m", "common.results", "--exp-dir", self.exp, "--root", self.root,
                            "--markdown"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, self.text(markdown=True))
        p = subprocess.run([sys.executable, "-m", "common.results", "--root", self.root, "--method", "nope"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 2)
        self.assertIn("no paper_results.json for method 'nope'", p.stdout + p.stderr)


class RepositoryPaperFiles(unittest.TestCase):
    """The committed paper_results.json files against the method READMEs' tables (an independent transcription)."""

    @classmethod
    def setUpClass(cls):
        cls.paper = R.load_paper_tables(ROOT)

    def values(self, method, table):
        return {(e["train"], e["row"], e["test"], e["metric"]): e["value"]
                for e in self.paper[method]["entries"] if e.get("table") == table}

    def test_qaconv_version_table_matches_readme(self):
        with open(os.path.join(ROOT, "qaconv", "README.md")) as f:
            text = f.read()
        train_key = {"Market": ("market", ""), "MSMT (train)": ("msmt", " (train)"), "MSMT (all)": ("msmt", " (all)"),
                     "RandPerson": ("randperson", "")}
        expected = {}
        for m in re.finditer(r"^\| (Market|MSMT \(train\)|MSMT \(all\)|RandPerson) \| \**([12]\.[0-9])\** \| "
                             r"[0-9.]+ \| (.*?) \| (.*?) \| (.*?) \|$", text, re.M):
            train, suffix = train_key[m.group(1)]
            for test, cell in zip(("cuhk03_np_detected", "market", "msmt"), m.group(3, 4, 5)):
                if cell.strip() != "-":
                    r1, mp = (float(x) for x in cell.split("/"))
                    expected[(train, m.group(2) + suffix, test, "rank1")] = r1
                    expected[(train, m.group(2) + suffix, test, "mAP")] = mp
        self.assertEqual(len(expected), 2 * (5 * 2 + 3 * 2 + 5 * 2 + 4 * 3))
        self.assertEqual(self.values("qaconv", "versions"), expected)

    def test_crossmodal_bot_matches_readme(self):
        with open(os.path.join(ROOT, "crossmodal_bot", "README.md")) as f:
            text = f.read()
        pairs = [("market", "market"), ("market", "duke"), ("duke", "duke"), ("duke", "market")]
        got = self.values("crossmodal_bot", "market_duke")
        for label, row in (("paper (Luo et al.)", "paper (Luo et al.)"),
                           ("re-implementation (seed table)", "re-implementation"),
                           ("re-implementation, no random erasing", "re-implementation, no random erasing")):
            line = next(l for l in text.splitlines() if l.startswith(f"| {label} |"))
            cells = [c.strip() for c in line.strip("|").split("|")][1:5]
            for (train, test), cell in zip(pairs, cells):
                if cell == "-":
                    self.assertNotIn((train, row, test, "rank1"), got)
                    continue
                r1, mp = re.match(r"([0-9.]+) \(([0-9.]+)\)", cell).groups()
                self.assertEqual(got[(train, row, test, "rank1")], float(r1))
                self.assertEqual(got[(train, row, test, "mAP")], float(mp))

    def test_every_entry_names_a_source_and_matches_args(self):
        for method, data in self.paper.items():
            for e in data["entries"]:
                self.assertTrue(e["source"].strip(), (method, e))
                if e.get("compare", True):
                    self.assertIn("match", e, (method, e))


if __name__ == "__main__":
    unittest.main()
