"""Feature extraction over a test loader: eval mode (restored afterwards), inference mode, optional AMP and
horizontal-flip averaging, optional L2 normalisation."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

from common.progress import bar as progress_bar


class Features(NamedTuple):
    """Features of one image set, in loader order.

    Attributes:
        feats: (N, D) or (N, C, H, W) float32 CPU tensor.
        pids: (N,) int64 person ids.
        camids: (N,) int64 camera ids.
        indices: (N,) int64 positions of the images in the loader's dataset.
    """

    feats: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    indices: np.ndarray


@contextmanager
def inference_context(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode inside the block; restore every submodule's previous mode on exit.

    Unlike a single ``model.train(previous)``, submodules that were deliberately in a different mode
    (e.g. frozen BatchNorm layers kept in eval during training) get their own flag back. Exceptions propagate.

    Args:
        model: the module.
    Yields:
        the same module, in eval mode.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def default_forward(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model(images)``, taking element 0 when the model returns a tuple or list."""
    out = model(images)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def normalize_channels(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise along dim 1 ((N, D): each vector; (N, C, H, W): each location's channel vector)."""
    return F.normalize(x, p=2, dim=1)


def extract_features(model: torch.nn.Module, loader, device, flip: bool = False, amp: bool = False,
                     amp_dtype: torch.dtype = torch.float16, normalize: bool = False,
                     forward_fn: Optional[Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]] = None,
                     progress: bool = True, desc: str = "extract") -> Features:
    """Run ``model`` over every batch of ``loader`` and collect features on the CPU.

    Args:
        model: the network, already on ``device``; put in eval mode during extraction, previous modes restored.
        loader: yields (images (B, 3, H, W), pids (B,), camids (B,), indices (B,)) batches, e.g.
            :func:`common.data.loaders.build_test_loader` (3-tuples get running indices).
        device: torch device (or its name) the images are moved to.
        flip: average the feature of each image with that of its horizontal flip; a 4-D feature map of the
            flipped image is flipped back along the width first so locations line up.
        amp: autocast to ``amp_dtype`` on CUDA; ignored on other devices.
        amp_dtype: autocast dtype (float16 or bfloat16).
        normalize: L2-normalise the (flip-averaged) features along dim 1.
        forward_fn: ``forward_fn(model, images) -> tensor`` replacing :func:`default_forward`.
        progress: show a tqdm bar.
        desc: bar label.
    Returns:
        :class:`Features` with float32 CPU ``feats`` of shape (N, D) or (N, C, H, W).
    Raises:
        ValueError: when the loader yields no batch.
    """
    device = torch.device(device)
    forward = forward_fn or default_forward
    use_amp = bool(amp) and device.type == "cuda"
    feats, pids, camids, indices = [], [], [], []
    seen = 0
    with inference_context(model), torch.inference_mode():
        for batch in progress_bar(desc=desc, progress=progress, iterable=loader):
            images, b_pids, b_cams = batch[0], batch[1], batch[2]
            n = images.shape[0]
            b_idx = batch[3] if len(batch) > 3 else torch.arange(seen, seen + n)
            seen += n
            images = images.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                out = forward(model, images).float()
                if flip:
                    out_flip = forward(model, images.flip(3)).float()
                    if out_flip.dim() == 4:
                        out_flip = out_flip.flip(3)
                    out = (out + out_flip) / 2
            if normalize:
                out = normalize_channels(out)
            feats.append(out.cpu())
            pids.append(np.asarray(b_pids, dtype=np.int64).reshape(-1))
            camids.append(np.asarray(b_cams, dtype=np.int64).reshape(-1))
            indices.append(np.asarray(b_idx, dtype=np.int64).reshape(-1))
    if not feats:
        raise ValueError(f"extract_features({desc!r}): the loader yielded no batch (empty image list?)")
    return Features(torch.cat(feats, 0).float(), np.concatenate(pids), np.concatenate(camids),
                    np.concatenate(indices))


def extract_features_sharded(model: torch.nn.Module, items, make_loader: Callable, device, batch_size: int,
                             **kwargs) -> Features:
    """:func:`extract_features` split across the ranks of ``torchrun``, gathered in ``items``' order.

    Rank r extracts the contiguous shard ``common.distributed.shard_range(len(items), align=batch_size)`` of
    ``items`` (whole test batches, so every batch is a single-process batch and the features are bit-identical);
    :func:`common.distributed.gather_features` then gives every rank all N rows in order, ``indices`` being
    positions in ``items``. Alone: exactly ``extract_features(model, make_loader(items), device, **kwargs)``.
    Every rank must call it (collective). Rank 0's weights and buffers are first copied into ``model`` on every
    rank (BN running statistics drift apart per rank during DDP training). Pass the plain model (``common.distributed.unwrap``), not the DDP
    wrapper, whose forward would synchronise buffers across ranks with unequal batch counts.

    Args:
        model: the network on ``device``.
        items: the image list (e.g. query records), sliceable.
        make_loader: ``make_loader(sub_list) -> loader`` in list order with batches of ``batch_size``, yielding
            indices relative to ``sub_list`` (e.g. ``common.data.loaders.build_test_loader``).
        device: this rank's device.
        batch_size: the loader's batch size (the shard alignment).
        **kwargs: :func:`extract_features` options (flip, amp, normalize, forward_fn, progress, desc).
    Returns:
        :class:`Features` of all ``len(items)`` images, on every rank.
    """
    from common.distributed import all_gather_objects, broadcast_module, gather_features, is_distributed, shard_range
    if not is_distributed():
        return extract_features(model, make_loader(items), device, **kwargs)
    if isinstance(model, torch.nn.Module):
        # rank 0's weights and buffers on every rank: after the last training forward each rank's BN running
        # statistics hold its own share of the batch, so without this the shards would come from different models
        broadcast_module(model)
    part = shard_range(len(items), align=batch_size)
    local = None
    if len(part):
        local = extract_features(model, make_loader(items[part.start:part.stop]), device, **kwargs)
    meta = None if local is None else (tuple(local.feats.shape[1:]), str(local.feats.dtype).replace("torch.", ""))
    tails = [t for t in all_gather_objects(meta) if t is not None]
    if not tails:
        raise ValueError(f"extract_features_sharded({kwargs.get('desc', 'extract')!r}): empty image list")
    if local is None:  # more ranks than batches: this rank contributes no rows (same row shape and dtype)
        empty = np.zeros(0, dtype=np.int64)
        shape, dtype = tails[0]
        local = Features(torch.zeros((0,) + tuple(shape), dtype=getattr(torch, dtype)), empty, empty.copy(),
                         empty.copy())
    return gather_features(local)
