"""The original's API as thin functions over the same code: ``MuDeep_v2(cfg).train()`` and
``MuDeep_v2(cfg).test(model_path, out_name, overwrite=False)``.

``cfg`` is the original's nested dict (``{'NAME': ..., 'TRAIN': {'LR': ...}, 'TEST': {...}}``, any subset; see
:data:`mudeep.config.ORIGINAL_CFG`); ``extra`` holds further command-line flags (e.g. ``['--dataset', 'synthetic',
'-a', 'resnet18', '--no-pretrained']``).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from mudeep.config import cfg_to_argv, parse_args


class MuDeep_v2:  # noqa: N801 (the original's name)
    def __init__(self, cfg: Optional[Dict] = None, extra: Sequence[str] = ()):
        self.argv = cfg_to_argv(cfg or {}) + list(extra)

    def _run(self, fn, *fn_args, evaluate: bool = False):
        from mudeep import engine
        args = parse_args(self.argv + (["--evaluate"] if evaluate else []))
        run = engine.setup(args)
        try:
            return fn(args, run, *fn_args)
        finally:
            run.close()

    def train(self) -> Dict[str, Dict]:
        from mudeep import engine
        return self._run(engine.train)

    def test(self, model_path: str, out_name: str, overwrite: bool = False) -> Dict[str, Dict]:
        from mudeep import engine
        return self._run(engine.test, model_path, out_name, overwrite, evaluate=True)
