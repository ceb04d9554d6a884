"""First-run hygiene in common/ (issue 8): flag validation, explicit flags, checkpoint args in test mode, run-folder
lock, leftover temporary files, resume-arg checks, one args file per mode, divergence guard, image check, progress
display, and the one-block error printer."""
import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from contextlib import redirect_stderr
from unittest import mock

import torch
from PIL import Image

from common.cli import (HelpFormatter, adopt_stored_args, base_parser, default_workers, explicit_dests, parse_args,
                        resolve_common)
from common.errors import ReidError, run_main
from common.guard import DivergenceGuard, Diverged, check_finite_parameters
from common.preflight import check_images, check_resume_file
from common.progress import interactive
from common.run import RunLock, check_resume_args, clean_temporary_files, setup_run


def parser():
    return argparse.ArgumentParser("t", parents=[base_parser()], formatter_class=HelpFormatter)


class TestFlags(unittest.TestCase):
    def test_numeric_flags_are_validated_at_parse_time(self):
        for bad in (["--lr", "inf"], ["--lr", "nan"], ["--lr", "0"], ["--lr", "-1"], ["--epochs", "0"],
                    ["-b", "0"], ["-j", "-1"], ["--height", "0"], ["--lr", "x"]):
            with redirect_stderr(io.StringIO()) as err, self.assertRaises(SystemExit):
                parse_args(parser(), bad)
            self.assertIn(f"argument {bad[0]}", err.getvalue(), bad)
        self.assertEqual(parse_args(parser(), ["--lr", "1e-3"]).lr, 1e-3)

    def test_explicit_dests_are_what_was_typed(self):
        p = parser()
        p.set_defaults(height=384)
        self.assertEqual(explicit_dests(p, ["--lr", "0.1", "-a", "resnet18", "--no-progress"]),
                         {"lr", "arch", "progress"})
        self.assertEqual(explicit_dests(p, []), set())
        self.assertEqual(p.parse_args([]).height, 384)  # defaults restored after the second parse
        self.assertEqual(parse_args(p, ["--width", "64"]).explicit, ["width"])

    def test_help_shows_defaults_and_workers_fit_the_machine(self):
        text = parser().format_help()
        self.assertIn("(default: 0.00035)", text)
        self.assertIn("(default: market)", text)
        self.assertLessEqual(default_workers(), os.cpu_count())
        with mock.patch("os.cpu_count", return_value=2):
            self.assertEqual(default_workers(8), 2)

    def test_adopt_stored_args(self):
        args = parse_args(parser(), ["--width", "64"])
        taken = adopt_stored_args(args, {"arch": "resnet18", "height": 128, "width": 64}, ("arch", "height",
                                                                                          "width", "neck"), "ck.pth")
        self.assertEqual((args.arch, args.height, args.width, taken), ("resnet18", 128, 64, ["arch", "height"]))
        args = parse_args(parser(), ["--height", "256"])
        with self.assertRaisesRegex(ReidError, r"--height 256 disagrees with the checkpoint, which was trained with "
                                               r"128") as ctx:
            adopt_stored_args(args, {"height": 128}, ("height",), "ck.pth")
        self.assertEqual(ctx.exception.where, "ck.pth")


def make_args(exp, *extra):
    return resolve_common(parse_args(parser(), ["--dataset", "synthetic", "--exp-dir", exp, "--device", "cpu",
                                                "--no-tensorboard", *extra]))


class TestRunFolder(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def test_lock_one_writer_and_stale_lock_taken_over(self):
        run = setup_run(make_args(self.tmp.name), "m")
        with open(os.path.join(run.dir, ".lock")) as f:
            self.assertEqual(int(f.read().split()[0]), os.getpid())
        with self.assertRaisesRegex(ReidError, f"another run \\(pid {os.getpid()}"):
            setup_run(make_args(self.tmp.name), "m")
        run.close()
        self.assertFalse(os.path.exists(os.path.join(run.dir, ".lock")))
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        import socket
        with open(os.path.join(run.dir, ".lock"), "w") as f:
            f.write(f"{dead.pid} {socket.gethostname()}\n")
        run = setup_run(make_args(self.tmp.name), "m")  # the killed run's lock is taken over
        self.assertEqual(run.lock.taken_over, f"pid {dead.pid}")
        run.close()
        self.assertIn(f"took over the lock of a run that is gone (pid {dead.pid})",
                      open(os.path.join(run.dir, "log.txt")).read())

    def test_leftover_temporary_files_are_removed(self):
        d = os.path.join(self.tmp.name, "m", "synthetic", "resnet50-s0")
        os.makedirs(os.path.join(d, "checkpoints"))
        for name in ("checkpoint.pth.tmp", "checkpoints/ckpt_ep002.pth.tmp", "x_score.mat.tmp.mat", "keep.pth"):
            open(os.path.join(d, name), "w").close()
        run = setup_run(make_args(self.tmp.name), "m")
        run.close()
        self.assertEqual(sorted(os.listdir(d)), sorted(["args.json", "checkpoints", "keep.pth", "log.txt"]))
        self.assertEqual(os.listdir(os.path.join(d, "checkpoints")), [])
        self.assertEqual(clean_temporary_files(d), [])

    def test_resume_with_other_args_stops_naming_flag_values_and_fixes(self):
        run = setup_run(make_args(self.tmp.name, "--lr", "0.001"), "m")
        open(os.path.join(run.dir, "checkpoint.pth"), "w").close()
        run.close()
        for allowed in (["--lr", "0.001", "--epochs", "200", "-j", "0", "--no-progress"],):
            setup_run(make_args(self.tmp.name, *allowed), "m").close()  # epochs/workers/progress may change
        with self.assertRaises(ReidError) as ctx:
            setup_run(make_args(self.tmp.name, "--lr", "0.01"), "m")
        msg = str(ctx.exception)
        for part in ("--lr: 0.001 in the run, 0.01 now", "--run-name", "--no-auto-resume"):
            self.assertIn(part, msg)
        with open(os.path.join(run.dir, "args.json")) as f:
            self.assertEqual(json.load(f)["args"]["lr"], 0.001)  # the record was not overwritten
        args = make_args(self.tmp.name, "--lr", "0.01")
        args.auto_resume = False  # a fresh start in the same folder is not a resume
        setup_run(args, "m").close()

    def test_no_check_without_a_checkpoint(self):
        setup_run(make_args(self.tmp.name, "--lr", "0.001"), "m").close()
        setup_run(make_args(self.tmp.name, "--lr", "0.01"), "m").close()  # nothing trained yet: nothing to protect
        check_resume_args(os.path.join(self.tmp.name, "nothing"), make_args(self.tmp.name))

    def test_one_args_file_per_mode(self):
        setup_run(make_args(self.tmp.name, "--lr", "0.001"), "m").close()
        test_args = make_args(self.tmp.name, "--evaluate")
        run = setup_run(test_args, "m")
        run.close()
        self.assertEqual(run.mode, "test")
        self.assertTrue(os.path.isfile(os.path.join(run.dir, "args_test.json")))
        with open(os.path.join(run.dir, "args.json")) as f:
            self.assertEqual(json.load(f)["args"]["lr"], 0.001)
        setup_run(make_args(self.tmp.name), "m", mode="visualize").close()
        self.assertTrue(os.path.isfile(os.path.join(run.dir, "args_visualize.json")))

    def test_short_args_summary_in_the_log(self):
        run = setup_run(make_args(self.tmp.name, "-a", "resnet18", "--height", "128", "--width", "64"), "m")
        run.close()
        log = open(os.path.join(run.dir, "log.txt")).read()
        self.assertIn("synthetic -> synthetic | arch resnet18 | input 128x64 | batch 64 | lr 0.00035", log)
        self.assertNotIn('"pretrained_path"', log)  # no one-line dump of every arg
        self.assertLess(max(len(line) for line in log.splitlines()), 400)


class TestErrors(unittest.TestCase):
    def test_run_main_prints_one_block_and_exits_2(self):
        def main(argv):
            raise ReidError("--resume x.pth: no such file", fix="drop --resume", where="/tmp")
        err = io.StringIO()
        with redirect_stderr(err), self.assertRaises(SystemExit) as ctx:
            run_main(main, [])
        self.assertEqual(ctx.exception.code, 2)
        self.assertEqual(err.getvalue(), "error: --resume x.pth: no such file\nwhere: /tmp\nfix:   drop --resume\n")

    def test_bugs_keep_their_traceback(self):
        def main(argv):
            raise KeyError("bug")
        with self.assertRaises(KeyError):
            run_main(main, [])

    def test_missing_resume_file(self):
        check_resume_file("")
        check_resume_file("auto")
        with self.assertRaisesRegex(ReidError, "--resume /no/such.pth: no such file"):
            check_resume_file("/no/such.pth")


class TestDivergence(unittest.TestCase):
    def test_guard_counts_consecutive_non_finite_losses(self):
        g = DivergenceGuard(patience=3)
        self.assertTrue(g.ok(1.0))
        self.assertFalse(g.ok(float("nan")))
        self.assertFalse(g.ok(torch.tensor(float("inf"))))
        self.assertTrue(g.ok(torch.tensor(0.5)))  # a finite loss resets the count
        self.assertFalse(g.ok(float("nan")))
        self.assertFalse(g.ok(float("nan")))
        with self.assertRaisesRegex(Diverged, "not finite .* for 3 consecutive steps .*epoch 2"):
            g.ok(float("nan"), where="epoch 2")
        self.assertEqual(g.total_bad, 5)

    def test_non_finite_weights_are_named(self):
        net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        check_finite_parameters(net)
        with torch.no_grad():
            net[1].running_var[0] = float("nan")
        with self.assertRaisesRegex(Diverged, "weight 1.running_var is not finite"):
            check_finite_parameters(net)


class TestImageCheck(unittest.TestCase):
    def test_every_bad_image_listed_at_once(self):
        with tempfile.TemporaryDirectory() as d:
            good = os.path.join(d, "0001_c1s1_000151_01.jpg")
            Image.new("RGB", (64, 128), (10, 200, 30)).save(good)
            truncated = os.path.join(d, "0002_c1s1_000151_01.jpg")
            with open(good, "rb") as f:
                data = f.read()
            with open(truncated, "wb") as f:
                f.write(data[: len(data) // 3])
            empty = os.path.join(d, "0003_c2s1_000151_01.jpg")
            open(empty, "w").close()
            text = os.path.join(d, "0004_c2s1_000151_01.jpg")
            with open(text, "w") as f:
                f.write("not an image")
            self.assertEqual(check_images([good], progress=False, log=lambda m: None), 1)
            with self.assertRaises(ReidError) as ctx:
                check_images([good, truncated, empty, text, os.path.join(d, "gone.jpg")], progress=False)
        msg = str(ctx.exception)
        self.assertIn("4 of 5 images cannot be read", msg)
        for name in ("0002_c1s1", "0003_c2s1_000151_01.jpg: empty file", "0004_c2s1", "gone.jpg: missing"):
            self.assertIn(name, msg)
        self.assertNotIn("0001_c1s1", msg)
        self.assertIn("--no-check-images", msg)


class TestSharedEvaluatorNonFinite(unittest.TestCase):
    def test_all_nan_is_an_error_and_some_nan_a_warning(self):
        import numpy as np
        from common.eval.rank import evaluate_rank
        ids, cams = np.array([1, 2]), np.array([0, 0])
        g_ids, g_cams = np.array([1, 2, 3]), np.array([1, 1, 1])
        for use_cython in (True, False):
            with self.assertRaisesRegex(ReidError, "every distance is NaN/inf: the model has diverged"):
                evaluate_rank(np.full((2, 3), np.nan), ids, g_ids, cams, g_cams, use_cython=use_cython)
            d = np.array([[np.nan, 0.5, 0.7], [0.1, 0.2, 0.3]])
            with self.assertWarnsRegex(RuntimeWarning, "1 of 6 distances is NaN"):
                res = evaluate_rank(d, ids, g_ids, cams, g_cams, max_rank=3, use_cython=use_cython)
            # query 1: its match (NaN) ranks last of 3 -> AP 1/3; query 2: match at rank 2 -> AP 1/2
            self.assertAlmostEqual(res["mAP"], (1 / 3 + 1 / 2) / 2)


class TestStatsFormat(unittest.TestCase):
    def test_accuracy_printed_as_percent_everywhere(self):
        from common.meters import format_stats
        self.assertEqual(format_stats({"loss": 5.6, "acc": 0.0208, "tri_acc": 0.5, "skipped": 0, "lr": 3.5e-6}),
                         "loss 5.6 acc 2.08% tri_acc 50.00% skipped 0 lr 3.5e-06")


class TestProgress(unittest.TestCase):
    def test_bars_only_on_a_terminal(self):
        self.assertFalse(interactive(False))
        with mock.patch("sys.stderr", io.StringIO()):
            self.assertFalse(interactive(True))  # redirected: plain log lines instead
        tty = mock.Mock()
        tty.isatty.return_value = True
        with mock.patch("sys.stderr", tty):
            self.assertTrue(interactive(True))


if __name__ == "__main__":
    unittest.main()
