"""QAConv model pieces in one place: the ``ResMap`` feature-map network, the ``QAConv`` matcher, the optimizer's
parameter groups and the reader of checkpoints written by the original code.

``ResMap`` and the IBN-Net blocks live in :mod:`qaconv.backbone`, the matcher in :mod:`qaconv.qaconv`; both are
re-exported here.

Reference:
    ShengcaiLiao/QAConv main.py (optimizer groups, ``checkpoint.pth.tar`` layout), reid/models/*.py.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from common.weights import IBN_FILES, IMAGENET_FILES, PretrainedWeightsNotFound, find_weights  # noqa: F401
from qaconv.backbone import IBN, STRIDES, IBNBasicBlock, IBNBottleneck, ResMap, build_resnet  # noqa: F401
from qaconv.qaconv import VERSIONS, QAConv, flops_per_pair  # noqa: F401

__all__ = ["IBN", "IBN_FILES", "IMAGENET_FILES", "STRIDES", "VERSIONS", "IBNBasicBlock", "IBNBottleneck",
           "PretrainedWeightsNotFound", "QAConv", "ResMap", "build_resnet", "find_weights", "flops_per_pair",
           "load_original_checkpoint", "matcher_state_from_criterion", "optimizer_param_groups"]


def optimizer_param_groups(model: ResMap, matcher_or_criterion: nn.Module, lr: float) -> List[Dict[str, Any]]:
    """The original's three SGD parameter groups.

    Args:
        model: a :class:`ResMap` (or any module with a ``base`` backbone).
        matcher_or_criterion: the matcher, or a loss holding it (its parameters are the matcher's).
        lr: base learning rate.
    Returns:
        ``[{'params': backbone params, 'lr': 0.1 * lr}, {'params': other model params (neck), 'lr': lr},
        {'params': matcher params, 'lr': lr}]``. The backbone group includes parameters the forward never uses
        (layer4 / fc past ``final_layer``), as in the original: they only receive weight decay.
    """
    base = list(model.base.parameters())
    base_ids = {id(p) for p in base}
    new = [p for p in model.parameters() if id(p) not in base_ids]
    return [{"params": base, "lr": 0.1 * lr}, {"params": new, "lr": lr},
            {"params": list(matcher_or_criterion.parameters()), "lr": lr}]


def _strip_module(state: Dict[str, Any]) -> Dict[str, Any]:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _numpy_safe_globals() -> list:
    """NumPy scalar / dtype classes some old checkpoints pickle (e.g. a ``base_loss`` numpy float)."""
    core = getattr(np, "_core", None) or np.core
    classes = [core.multiarray.scalar, np.dtype]
    classes += [getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType",
                                                "BoolDType") if hasattr(np, "dtypes") and hasattr(np.dtypes, n)]
    return classes


def load_original_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a ``checkpoint.pth.tar`` written by the original code (``torch.load(weights_only=True)``).

    Args:
        path: file holding ``{'model', 'criterion', 'optim', 'epoch', ...}`` (HEAD adds ``final_epochs``,
            ``base_loss``, ``lr_stepped``).
    Returns:
        (model_state, criterion_state, extra): the two state dicts with any DataParallel ``module.`` prefix removed
        (model keys ``base.*``, ``neck_conv.*``, ``neck_bn.*``; criterion keys ``matcher.bn.weight``, ... or, for
        v1.0 ``QAConvLoss``, ``bn.weight``, ..., ``class_memory``), and every other entry (``optim``, ``epoch``, ...).
    Raises:
        FileNotFoundError / RuntimeError with the path and the reason.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist. Fix: pass the checkpoint.pth.tar of a run of "
                                f"the original code (<exp_dir>/<Dataset>/<method>/<sub_method>/checkpoint.pth.tar).")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise RuntimeError(f"could not load {path} with weights_only=True: {e}") from e
    if not isinstance(ckpt, dict) or not ({"model", "state_dict"} & set(ckpt)):
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else []
        raise RuntimeError(f"{path} is not an original QAConv checkpoint (expected a dict with 'model' and "
                           f"'criterion'; got {type(ckpt).__name__} with keys {keys})")
    model_key = "model" if "model" in ckpt else "state_dict"
    model_state = _strip_module(ckpt[model_key])
    criterion_state = _strip_module(ckpt.get("criterion", {}))
    extra = {k: v for k, v in ckpt.items() if k not in (model_key, "criterion")}
    return model_state, criterion_state, extra


def matcher_state_from_criterion(criterion_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The matcher's state dict inside a criterion's: ``matcher.*`` keys (v1.1+), else the top-level ``bn.*``,
    ``fc.*``, ``logit_bn.*`` keys of the v1.0 ``QAConvLoss`` (which held the layers itself)."""
    sub = {k[len("matcher."):]: v for k, v in criterion_state.items() if k.startswith("matcher.")}
    if sub:
        return sub
    return {k: v for k, v in criterion_state.items() if k.split(".")[0] in ("bn", "fc", "logit_bn")}
