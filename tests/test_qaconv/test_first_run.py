"""First run through qaconv/main_gs.py (issue 8): the default run folder names the model, --evaluate takes the
checkpoint's model args, a finished run re-run prints its results, the TensorBoard/metrics step never repeats across
graph-sampling epochs of different lengths, and a bad flag is one message with exit 2."""
import json
import os
import unittest

from tests.e2e import Workspace

WS = Workspace("qaconv-first-run-", "synthetic", num_ids=40)
setUpModule, tearDownModule = WS.generate, WS.cleanup
SCRIPT = "qaconv/main_gs.py"


def args(exp, *extra):
    return ["--dataset", "synthetic", "--synthetic-ids", "40", "--data-dir", WS.data, "--exp-dir", exp, "--device",
            "cpu", "-j", "0", "--no-progress", *extra]


TRAIN = ("-a", "resnet18", "--ibn", "none", "--no-pretrained", "--no-freeze-bn", "--height", "64", "--width", "32",
         "-b", "8", "--num_instance", "2", "--loss", "pairwise", "--epochs", "2", "--max-batches", "3",
         "--no-tensorboard")


def table_rows(text):
    return [line.split("|")[1:] for line in text.splitlines() if line.startswith("trained ")]


class TestQAConvFirstRun(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.exp = os.path.join(WS.path, "exp")
        cls.train = WS.run(SCRIPT, args(cls.exp, *TRAIN))
        cls.dir = os.path.join(cls.exp, "qaconv", "synthetic", "resnet18-layer3-v2.1-s0")

    def test_default_folder_names_the_model(self):
        self.assertEqual(self.train.returncode, 0, self.train.stderr[-3000:])
        self.assertTrue(os.path.isfile(os.path.join(self.dir, "checkpoint.pth")), os.listdir(self.exp))
        self.assertNotIn("\r", self.train.stdout + self.train.stderr)

    def test_metric_steps_never_repeat(self):
        steps = {}
        with open(os.path.join(self.dir, "metrics.jsonl")) as f:
            for line in f:
                rec = json.loads(line)
                for tag in rec:
                    if tag not in ("step", "time"):
                        steps.setdefault(tag, []).append(rec["step"])
        self.assertIn("iter/loss", steps)
        for tag, seq in steps.items():
            self.assertEqual(seq, sorted(set(seq)), tag)
        self.assertEqual(len(steps["iter/loss"]), 6)  # 2 epochs x 3 batches

    def test_evaluate_uses_the_checkpoints_model_and_finished_rerun(self):
        p = WS.run(SCRIPT, args(self.exp, "--evaluate", "--run-name", "resnet18-layer3-v2.1-s0"))
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        self.assertIn("from the checkpoint's training args: arch=resnet18, ibn=None, height=64, width=32", p.stdout)
        trained = table_rows(self.train.stdout)[-1]
        evaluated = [line.split("|")[1:] for line in p.stdout.splitlines() if line.startswith("synthetic / ")][-1]
        self.assertEqual(evaluated, trained)
        p = WS.run(SCRIPT, args(self.exp, *TRAIN))
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        self.assertIn("this run is finished (epoch 2)", p.stdout)
        self.assertEqual(table_rows(p.stdout)[-1], trained)

    def test_bad_flags_are_one_message(self):
        for bad, text in ((["-b", "7"], "multiple of --num_instance"), (["--lr", "nan"], "argument --lr"),
                          (["--epochs", "0"], "argument --epochs")):
            p = WS.run(SCRIPT, args(os.path.join(WS.path, "exp-bad"), *TRAIN, *bad))
            self.assertEqual(p.returncode, 2, bad)
            self.assertNotIn("Traceback", p.stderr)
            self.assertIn(text, p.stderr)
        self.assertFalse(os.path.exists(os.path.join(WS.path, "exp-bad")))


if __name__ == "__main__":
    unittest.main()
