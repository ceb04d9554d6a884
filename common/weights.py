"""ImageNet / IBN-Net backbone weight files: where to find them on disk and how to load them. Never downloads.

A weight file is taken from ``--pretrained-path`` when one is given, else from torchvision's cache folder
``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``) under one of its released names
(:data:`IMAGENET_FILES`, :data:`IBN_FILES`). When no file is found, :class:`PretrainedWeightsNotFound` names the
expected file(s), the URL to fetch it from and the fixes: put the file in the cache folder or pass
``--pretrained-path``, or train from random initialisation with ``--no-pretrained``.

The IBN-Net block definitions belong to the methods that build them (``qaconv/backbone.py``); only the names and
URL of the released files live here, next to torchvision's, so every method looks files up the same way.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

# torchvision IMAGENET1K_V1 files (the weights ``pretrained=True`` loaded in the original code of every method),
# then the pre-0.13 names of the same V1 weights (reid-strong-baseline downloads resnet50-19c8e357.pth).
IMAGENET_FILES: Dict[str, List[str]] = {
    "resnet18": ["resnet18-f37072fd.pth", "resnet18-5c106cde.pth"],
    "resnet34": ["resnet34-b627a593.pth", "resnet34-333f7ec4.pth"],
    "resnet50": ["resnet50-0676ba61.pth", "resnet50-19c8e357.pth"],
    "resnet101": ["resnet101-63fe2227.pth", "resnet101-5d3b4d8f.pth"],
    "resnet152": ["resnet152-394f9c45.pth", "resnet152-b121ed2d.pth"],
}
IMAGENET_URL = "https://download.pytorch.org/models/"
# The IBN-Net v1.0 release files (what torch.hub.load('XingangPan/IBN-Net', ...) downloads).
IBN_FILES: Dict[str, str] = {
    "resnet18_ibn_a": "resnet18_ibn_a-2f571257.pth", "resnet34_ibn_a": "resnet34_ibn_a-94bc1577.pth",
    "resnet50_ibn_a": "resnet50_ibn_a-d9d0bb7b.pth", "resnet101_ibn_a": "resnet101_ibn_a-59ea0ac6.pth",
    "resnet18_ibn_b": "resnet18_ibn_b-bc2f3c11.pth", "resnet34_ibn_b": "resnet34_ibn_b-04134c37.pth",
    "resnet50_ibn_b": "resnet50_ibn_b-9ca61e85.pth", "resnet101_ibn_b": "resnet101_ibn_b-c55f6dba.pth",
}
IBN_URL = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/"


class PretrainedWeightsNotFound(FileNotFoundError):
    """ImageNet weights were asked for but no file was found; the message names the file and the fixes."""


def torchvision_cache_dir() -> str:
    """``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``), where torchvision keeps weights.

    Read at every call (through ``torch.hub.get_dir``), so a changed ``$TORCH_HOME`` is honoured.
    """
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def weight_files(name: str) -> Tuple[List[str], str]:
    """Accepted file names (preferred first) and download folder URL of the released weights of ``name``.

    Args:
        name: a key of :data:`IMAGENET_FILES` (``resnet50``) or of :data:`IBN_FILES` (``resnet50_ibn_b``).
    Returns:
        ``(files, url)``; ``url + files[0]`` is the download address of the preferred file.
    Raises:
        ValueError: ``name`` has no released weights.
    """
    if name in IMAGENET_FILES:
        return list(IMAGENET_FILES[name]), IMAGENET_URL
    if name in IBN_FILES:
        return [IBN_FILES[name]], IBN_URL
    raise ValueError(f"no released ImageNet weights for '{name}'; known: {sorted(IMAGENET_FILES)} and "
                     f"{sorted(IBN_FILES)}")


def find_weights(name: str, pretrained_path: str = "") -> str:
    """Return ``pretrained_path`` if given, else the first released file of ``name`` in torchvision's cache.

    Args:
        name: network name, ``resnet50`` or ``resnet50_ibn_b`` (see :func:`weight_files`).
        pretrained_path: explicit file; used as is when given, the cache is then not searched.
    Returns:
        path of an existing file.
    Raises:
        PretrainedWeightsNotFound: naming the expected file(s), the URL, the cache folder and the fixes.
        ValueError: ``name`` has no released weights.
    """
    files, url = weight_files(name)
    cache = torchvision_cache_dir()
    if pretrained_path:
        if os.path.isfile(pretrained_path):
            return pretrained_path
        raise PretrainedWeightsNotFound(
            f"--pretrained-path {pretrained_path} does not exist. Fix: point --pretrained-path at the ImageNet "
            f"file of {name} ({files[0]}, from {url}{files[0]}), or put that file in torchvision's cache folder "
            f"{cache} and leave --pretrained-path out; or train from random initialisation with --no-pretrained "
            f"(pretrained=False in Python).")
    for f in files:
        path = os.path.join(cache, f)
        if os.path.isfile(path):
            return path
    raise PretrainedWeightsNotFound(
        f"ImageNet weights for {name} not found: expected {' or '.join(files)} in torchvision's cache folder "
        f"{cache} (set by $TORCH_HOME). Weights are never downloaded. Fix: copy {url}{files[0]} into that folder, "
        f"or pass --pretrained-path FILE; or train from random initialisation with --no-pretrained "
        f"(pretrained=False in Python).")


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read a weight file with ``torch.load(weights_only=True)``.

    The state dict may be nested under ``'state_dict'`` and/or ``'model'``; a ``module.`` prefix (DataParallel)
    is stripped from the keys.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def load_backbone_weights(net: nn.Module, path: str, name: str, strict: bool = True,
                          drop_fc: bool = False) -> Dict[str, Any]:
    """Load the ImageNet weight file ``path`` (see :func:`read_state_dict`) into the ResNet ``net``.

    Args:
        net: torchvision-named ResNet (``conv1``, ``layer1``, ..., ``fc``).
        path: weight file, e.g. from :func:`find_weights`.
        name: network name for the messages.
        strict: raise when a key other than ``fc.*`` / ``num_batches_tracked`` is missing, or any key is
            unexpected, so that a file of the wrong variant is never loaded half-way. Otherwise such keys are
            only reported.
        drop_fc: leave the file's ``fc.*`` (ImageNet classifier) out, keeping ``net.fc`` as it is.
    Returns:
        ``{'path', 'missing', 'unexpected'}``: missing keys other than ``fc.*`` and unexpected keys, as lists.
    Raises:
        RuntimeError: a tensor shape does not fit, or (``strict``) keys are missing / unexpected.
    """
    state = read_state_dict(path)
    if drop_fc:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise RuntimeError(f"{path} does not fit {name}: {e}") from e
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    unexpected = list(result.unexpected_keys)
    if strict:
        bad = [k for k in missing if not k.endswith("num_batches_tracked")]
        if bad or unexpected:
            raise RuntimeError(f"{path} does not fit {name}: missing keys {bad}, unexpected keys {unexpected}. "
                               f"Fix: pass the file of {name} itself.")
    print(f"=> {name}: loaded ImageNet weights from {path} "
          f"(missing keys: {missing or 'none'}; unexpected keys: {unexpected or 'none'})")
    return {"path": path, "missing": missing, "unexpected": unexpected}
