"""First run and bad input through the real script (issue 8): errors before training as one block with exit 2 and
no run folder, test mode with the checkpoint's model args, a re-run of a finished run, a resume with other args,
corrupt images, divergence, and logs without progress-bar fragments."""
import glob
import json
import os
import shutil
import unittest

import torch

from tests.e2e import Workspace

WS = Workspace("bot-first-run-", "synthetic", num_ids=40)
setUpModule, tearDownModule = WS.generate, WS.cleanup
SCRIPT = "crossmodal_bot/main.py"


def args(exp, *extra):
    return ["--dataset", "synthetic", "--synthetic-ids", "40", "--data-dir", WS.data, "--exp-dir", exp,
            "--device", "cpu", "--workers", "0", "--no-tensorboard", *extra]


TRAIN = ("-a", "resnet18", "--no-pretrained", "--height", "64", "--width", "32", "-b", "16", "--max-batches", "3",
         "--eval-period", "0", "--epochs", "2", "--run-name", "r")


def last_table_row(text):
    return [line for line in text.splitlines() if line.startswith(("trained", "synthetic ->"))][-1].split("|")[1:]


class TestErrorsBeforeTraining(unittest.TestCase):
    def check_error(self, p, *parts):
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        self.assertNotIn("Traceback", p.stderr)
        self.assertTrue(p.stderr.lstrip().startswith(("error:", "dataset")) or "error:" in p.stderr, p.stderr)
        for part in parts:
            self.assertIn(part, p.stdout + p.stderr)

    def test_missing_dataset_weights_resume_and_unknown_names(self):
        exp = os.path.join(WS.path, "exp-errors")
        self.check_error(WS.run(SCRIPT, args(exp, "--dataset", "market", "--data-dir", os.path.join(WS.path, "no"))),
                         "Market-1501-v15.09.15", "--data-dir")
        self.check_error(WS.run(SCRIPT, args(exp, "--testset", "synthetic,duke")), "DukeMTMC-reID")
        self.check_error(WS.run(SCRIPT, args(exp, "--dataset", "nosuch")), "unknown dataset 'nosuch'")
        with_weights = dict(os.environ, TORCH_HOME=os.path.join(WS.path, "empty-cache"))
        import subprocess
        p = subprocess.run(WS.command(SCRIPT, args(exp, "-a", "resnet18")), cwd=WS.path, capture_output=True,
                           text=True, env=with_weights, timeout=300)
        self.check_error(p, "resnet18-f37072fd.pth", "--pretrained-path", "--no-pretrained")
        self.check_error(WS.run(SCRIPT, args(exp, *TRAIN, "--resume", "/no/such.pth")), "--resume /no/such.pth")
        self.check_error(WS.run(SCRIPT, args(exp, "--mode", "test", "--run-name", "never")), "no checkpoint")
        self.assertFalse(os.path.exists(exp), "a failed start must leave no run folder")

    def test_corrupt_images_are_listed_before_training(self):
        data = os.path.join(WS.path, "data-corrupt")
        shutil.copytree(WS.data, data)
        train = sorted(glob.glob(os.path.join(data, "synthetic", "*", "bounding_box_train", "*.jpg")))
        for path in train[:2]:
            with open(path, "wb") as f:
                f.write(b"\xff\xd8 broken")
        exp = os.path.join(WS.path, "exp-corrupt")
        p = WS.run(SCRIPT, args(exp, *TRAIN, "--data-dir", data))
        self.check_error(p, "2 of", "images cannot be read", os.path.basename(train[0]), os.path.basename(train[1]))
        self.assertFalse(os.path.exists(exp))


class TestRunLifecycle(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.exp = os.path.join(WS.path, "exp-life")
        cls.train = WS.run(SCRIPT, args(cls.exp, *TRAIN))
        cls.run_dir = os.path.join(cls.exp, "crossmodal_bot", "synthetic", "r")

    def test_train_log_has_no_bar_fragments(self):
        self.assertEqual(self.train.returncode, 0, self.train.stderr)
        self.assertNotIn("\r", self.train.stdout + self.train.stderr)
        log = open(os.path.join(self.run_dir, "log.txt")).read()
        self.assertIn("epoch 2/2", log)
        self.assertIn("arch resnet18 | input 64x32", log)

    def test_test_mode_takes_the_checkpoints_model_args(self):
        p = WS.run(SCRIPT, args(self.exp, "--mode", "test", "--run-name", "r"))  # no -a / --height / --width
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("from the checkpoint's training args: arch=resnet18, height=64, width=32", p.stdout)
        self.assertEqual(last_table_row(p.stdout), last_table_row(self.train.stdout))  # same figures as training
        p = WS.run(SCRIPT, args(self.exp, "--mode", "test", "--run-name", "r", "--height", "128"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("--height 128 disagrees with the checkpoint, which was trained with 64", p.stderr)
        with open(os.path.join(self.run_dir, "args.json")) as f:
            self.assertEqual(json.load(f)["mode"], "train")  # test mode wrote args_test.json instead
        self.assertTrue(os.path.isfile(os.path.join(self.run_dir, "args_test.json")))

    def test_rerun_of_a_finished_run_prints_its_results(self):
        p = WS.run(SCRIPT, args(self.exp, *TRAIN))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("this run is finished (epoch 2)", p.stdout)
        self.assertEqual(last_table_row(p.stdout), last_table_row(self.train.stdout))
        self.assertEqual(len(glob.glob(os.path.join(self.run_dir, "checkpoints", "*.pth"))), 1)

    def test_resume_with_another_lr_stops(self):
        p = WS.run(SCRIPT, args(self.exp, *TRAIN[:-1], "r", "--epochs", "3", "--lr", "0.01"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("--lr: 0.00035 in the run, 0.01 now", p.stderr)
        self.assertIn("--run-name", p.stderr)
        self.assertIn("--no-auto-resume", p.stderr)
        self.assertIn("--lr: 0.00035 in the run, 0.01 now", open(os.path.join(self.run_dir, "log.txt")).read())
        ck = torch.load(os.path.join(self.run_dir, "checkpoints", "ckpt_ep002.pth"), weights_only=True)
        self.assertEqual(ck["args"]["lr"], 0.00035)


class TestDivergence(unittest.TestCase):
    def test_nan_loss_stops_training_without_stepping(self):
        from common.guard import Diverged
        from crossmodal_bot.trainer import train_one_epoch
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        before = [p.detach().clone() for p in model.parameters()]

        class Net(torch.nn.Module):
            def forward(self, x):
                out = model(x)
                return out, out

        batches = [(torch.randn(2, 4), torch.tensor([0, 1]), None, None)] * 5
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        nan = lambda logits, feat, pids: (logits.sum() * float("nan"), {})  # noqa: E731
        from common.guard import DivergenceGuard
        with self.assertRaisesRegex(Diverged, "3 consecutive steps"):
            train_one_epoch(Net(), batches, nan, opt, torch.device("cpu"), 0, progress=False,
                            guard=DivergenceGuard(3), print_freq=0)
        for a, b in zip(before, model.parameters()):
            self.assertTrue(torch.equal(a, b))  # no optimiser step on a non-finite loss


if __name__ == "__main__":
    unittest.main()
