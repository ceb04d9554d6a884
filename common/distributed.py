"""Multi-process training and evaluation on PyTorch's own engine (``torch.distributed``, launched by ``torchrun``).

One process per device: ``torchrun --nproc_per_node N <method>/main.py ...`` sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them (``nccl`` on CUDA,
``gloo`` on the CPU). Without torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) every function here is a no-op:
world size 1, rank 0, the model unwrapped, batches and features unchanged, so a single process behaves exactly as
without this module.

Equal to one process, step for step, when each rank:

* builds the *same* global batch sampler with the *same* seed (the order must agree on every rank), wrapped in
  :class:`DistributedBatchSampler`, which hands rank r the r-th contiguous share of every global batch;
* seeds augmentation per rank (:func:`rank_seed`: rank 0 keeps the single-process seed);
* computes its losses so that DDP's gradient *average* is the global gradient: a per-sample mean over an equal
  share (cross-entropy) as is, a batch-level loss (batch-hard triplet, QAConv's pairwise / triplet matching) on
  the global batch rebuilt with :func:`gather_with_grad`;
* uses SyncBatchNorm (``wrap_ddp(..., sync_bn=True)``: torch's on CUDA, :class:`CPUSyncBatchNorm` on the CPU),
  or BatchNorm in eval mode (frozen statistics, as QAConv 2.x): per-rank BN statistics differ from the global ones.

**How P x K batches are split: whole identities.** A P x K batch is P runs of K consecutive indices, one identity
each (BoT's P x K and modality-balanced samplers, QAConv's graph sampler: the anchor class and its neighbours, K
images each). Rank r gets identities [r P/W, (r+1) P/W), all K images of each, so P must be a multiple of W. Not
equal K-shares (K/W images of every identity), because: (1) every rank then holds positives for each of its
anchors, so a loss computed on the local share stays defined (QAConv 2.1 has K = 2, and a K-share of 1 has no
positive); (2) BoT's modality balance (K/2 RGB + K/2 IR per identity) stays intact on each rank; (3) the shares
are contiguous, so concatenating them in rank order (what :func:`gather_with_grad` does) is the global batch in the
single-process order, and a loss on it is bit-for-bit the single-process loss.

**Feature extraction.** Each rank extracts the contiguous shard :func:`shard_range` of the image list (aligned to
the loader's batch size: bit-identical); :func:`gather_features` returns them in the dataset's order on every rank.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from common.checkpoint import rng_state, set_rng_state
from common.data.samplers import extract_pids, mix_seed
from common.env import seed_everything, select_device
from common.errors import ReidError
from common.sync_batchnorm import CPUSyncBatchNorm, convert_cpu_sync_batchnorm  # noqa: F401 (re-exported)


# ----------------------------------------------------------------------------------------------- set-up
@dataclass
class DistContext:
    """Where this process stands: ``rank``, ``world_size``, ``local_rank``, ``backend`` (None alone), ``device``."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", backend: Optional[str] = None, timeout_s: int = 1800) -> DistContext:
    """Join the process group torchrun describes; a no-op (world size 1) without torchrun.

    Args:
        device: ``--device``: ``auto`` / ``cuda`` / ``cuda:i`` give ``cuda:<LOCAL_RANK>`` under torchrun;
            ``cpu`` stays on the CPU.
        backend: default ``nccl`` on CUDA, ``gloo`` on the CPU.
        timeout_s: collective timeout.
    Returns:
        the :class:`DistContext` (also after a second call).
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistContext(device=select_device(device))
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise ReidError(f"WORLD_SIZE={world} is set but MASTER_ADDR / MASTER_PORT are not",
                        fix="launch with torchrun --nproc_per_node N <method>/main.py ..., which sets them all")
    name = (device or "auto").lower()
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        dev = torch.device("cpu")
    else:
        select_device("cuda")  # the clear error when CUDA is absent
        if local >= torch.cuda.device_count():
            raise ReidError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s)",
                            fix="pass --nproc_per_node at most the number of GPUs (or --device cpu)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank, world, local, dist.get_backend(), dev)


def destroy_distributed() -> None:
    """Leave the process group (end of ``main``); a no-op alone."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and alone): the process that logs, writes TensorBoard, checkpoints and pictures."""
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """``src``'s ``obj`` on every rank (picklable; e.g. a resume path or a sampler's state)."""
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (e.g. each rank's ``rng_state()`` for a checkpoint)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_seed(seed: int, rank: Optional[int] = None) -> int:
    """The seed of a rank's own randomness (augmentation, dropout): ``seed`` on rank 0, mixed with the rank else."""
    rank = get_rank() if rank is None else int(rank)
    return int(seed) if rank == 0 else mix_seed(int(seed), rank)


def seed_rank(seed: int, deterministic: bool = False) -> int:
    """``seed_everything(rank_seed(seed))``; returns the seed used. Samplers keep the base ``seed``."""
    s = rank_seed(seed)
    seed_everything(s, deterministic)
    return s


def check_world_size(saved: Optional[int], what: str = "this checkpoint") -> None:
    """ReidError when resuming ``what``, written by ``saved`` processes (None: 1), with another world size."""
    now, saved = get_world_size(), int(saved or 1)
    if saved != now:
        raise ReidError(f"{what} was written by {saved} process(es), this run has {now}; an exact resume needs "
                        f"the same world size (each rank's random state and batch share depend on it)",
                        fix=f"resume with torchrun --nproc_per_node {saved} (or python alone when it is 1), "
                            f"or start a new run (--no-auto-resume / another --run-name)")


def gather_rng_states() -> List[Any]:
    """Every rank's ``common.checkpoint.rng_state()`` (rank order): what rank 0 saves for an exact resume."""
    return all_gather_objects(rng_state())


def restore_rng_states(states: Sequence[Any], what: str = "this checkpoint") -> None:
    """Set this rank's random state from :func:`gather_rng_states`'s list (same world size, else ReidError)."""
    check_world_size(len(states), what)
    set_rng_state(states[get_rank()])


# ----------------------------------------------------------------------------------------------- batches
def shard_range(n: int, rank: Optional[int] = None, world_size: Optional[int] = None, align: int = 1) -> range:
    """Rank r's contiguous share of ``range(n)``, in whole blocks of ``align`` items.

    The ``ceil(n / align)`` blocks are split as evenly as possible (the first ranks get one block more). With
    ``align`` = the test loader's batch size every rank's batches are exactly the single-process batches, so the
    features are bit-identical to one process (a different batch composition changes CPU/GPU kernels' rounding
    by ~1e-8; the order is right either way).
    """
    rank = get_rank() if rank is None else int(rank)
    world = get_world_size() if world_size is None else int(world_size)
    align = max(1, int(align))
    base, extra = divmod(-(-int(n) // align), world)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return range(min(n, start * align), min(n, stop * align))


class DistributedBatchSampler:
    """Rank ``rank``'s contiguous share of every global batch of ``batch_sampler``.

    Use as ``DataLoader(dataset, batch_sampler=DistributedBatchSampler(BatchSampler(sampler, P * K, True), K))``.
    Concatenating the shares of ranks 0..W-1 gives back each global batch in its order.

    Args:
        batch_sampler: yields global batches (lists of dataset indices), identical on every rank (same seed).
        group_size: K for identity-structured batches (runs of K consecutive indices of one identity): each rank
            gets whole runs, so a batch must hold a multiple of W runs; 1 for unstructured batches (a multiple of W
            indices). See the module doc for why whole identities.
        pids: optional dataset pids; then every run is checked to be one identity.
        rank, world_size: default: this process's.
    """

    def __init__(self, batch_sampler, group_size: int = 1, pids: Optional[Sequence] = None,
                 rank: Optional[int] = None, world_size: Optional[int] = None):
        self.batch_sampler, self.group_size = batch_sampler, int(group_size)
        self.rank = get_rank() if rank is None else int(rank)
        self.world_size = get_world_size() if world_size is None else int(world_size)
        self.pids = None if pids is None else np.asarray(extract_pids(pids), dtype=np.int64)

    def split(self, batch: Sequence[int]) -> List[int]:
        """This rank's share of one global batch (raises ReidError when the batch cannot be split evenly)."""
        batch = [int(i) for i in batch]
        k, w = self.group_size, self.world_size
        if w == 1:  # one process: the batch as it is (no check), exactly as without this wrapper
            return batch
        if len(batch) % (k * w):
            raise ReidError(f"a global batch of {len(batch)} images is not {w} equal shares of whole groups of "
                            f"{k} ({len(batch) // max(k, 1)} identities for {w} processes)",
                            fix=f"make the number of identities per batch (batch size / K) a multiple of "
                                f"--nproc_per_node {w}")
        if self.pids is not None and k > 1:
            runs = self.pids[np.asarray(batch)].reshape(-1, k)
            if (runs != runs[:, :1]).any():
                raise ReidError(f"the batch sampler's runs of {k} consecutive indices are not one identity each",
                                fix="pass group_size = the sampler's K (images per identity), or 1")
        share = len(batch) // w
        return batch[self.rank * share:(self.rank + 1) * share]

    def set_epoch(self, epoch: int) -> None:
        for obj in (self.batch_sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self.batch_sampler:
            yield self.split(batch)

    def __len__(self) -> int:
        return len(self.batch_sampler)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of ``x`` (a detached copy, on every rank); ``x`` itself alone.

    E.g. a loss for the divergence guard and the log: every rank then takes the same skip decision (a non-finite
    value on one rank makes the mean non-finite everywhere), and the mean of equal-share losses is the global loss.
    """
    if not is_distributed():
        return x
    y = x.detach().clone().contiguous()
    if dist.get_backend() == "nccl" and y.device.type != "cuda":
        y = y.to(_comm_device())
    dist.all_reduce(y)
    return (y / get_world_size()).to(x.device)


def average_scalars(values: dict) -> dict:
    """``{name: mean over ranks}`` of a dict of floats (every rank passes the same names); the dict itself alone."""
    if not is_distributed():
        return values
    names = sorted(values)
    t = torch.tensor([float(values[k]) for k in names], dtype=torch.float64)
    t = all_reduce_mean(t.to(_comm_device())).cpu()
    return {k: float(v) for k, v in zip(names, t.tolist())}


def broadcast_module(module: nn.Module, src: int = 0) -> nn.Module:
    """Copy ``src``'s parameters and buffers into ``module`` on every rank, in place (no-op alone).

    For state kept outside the DDP model (e.g. BoT's center-loss centers) that must start equal on every rank.
    """
    if is_distributed():
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                buf = t.detach().to(_comm_device()).contiguous()
                dist.broadcast(buf, src=src)
                t.copy_(buf.to(t.device))
    return module


# ----------------------------------------------------------------------------------------------- autograd collectives
class _GatherWithGrad(torch.autograd.Function):
    """(W * B, ...) = the ranks' (B, ...) in rank order; dx = the sum over ranks of this rank's slice of dy."""

    @staticmethod
    def forward(ctx, x):
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, dy):
        dy = dy.contiguous().clone()
        dist.all_reduce(dy)
        r = dist.get_rank()
        return dy[r * ctx.rows:(r + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The global batch (W * B, ...) from every rank's equal share (B, ...), differentiable.

    Every rank computes the same global loss on it; the backward sums each rank's gradients into the share's
    owner, and DDP's average over ranks then equals the single-process gradient. Alone: ``x`` itself.
    """
    return _GatherWithGrad.apply(x) if is_distributed() else x


def wrap_ddp(model: nn.Module, device, sync_bn: bool = False, find_unused_parameters: bool = False,
             **ddp_kwargs) -> nn.Module:
    """``DistributedDataParallel(model)`` under torchrun (``model`` itself alone).

    Args:
        model: already on ``device``; DDP broadcasts rank 0's parameters and buffers to every rank.
        device: this rank's device (``DistContext.device``).
        sync_bn: BatchNorm statistics over the global batch: ``nn.SyncBatchNorm`` on CUDA, :class:`CPUSyncBatchNorm`
            elsewhere (its own process group, so its collectives never interleave with DDP's).
        find_unused_parameters, **ddp_kwargs: passed to DDP.
    Returns:
        the wrapped model; :func:`unwrap` gives the module whose ``state_dict()`` a checkpoint saves.
    """
    if not is_distributed():
        return model
    device = torch.device(device)
    if sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            model = convert_cpu_sync_batchnorm(model, dist.new_group(backend="gloo"))
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None,
                                               find_unused_parameters=find_unused_parameters, **ddp_kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (``model`` itself otherwise): save and load its ``state_dict()``."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ----------------------------------------------------------------------------------------------- features
def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(x: torch.Tensor, chunk_rows: int = 4096, dim: int = 0) -> torch.Tensor:
    """Every rank's ``x`` concatenated along ``dim`` (0 or 1) in rank order, on every rank (CPU; uneven sizes).

    ``dim=1``: e.g. each rank's (Q, G_r) distances to its gallery block -> (Q, G). Rows travel ``chunk_rows`` at a
    time, padded to the longest shard, so the transient buffers stay small. Alone: ``x`` itself.
    """
    if not is_distributed():
        return x
    if dim == 1:
        return gather_rows(x.transpose(0, 1).contiguous(), chunk_rows).transpose(0, 1).contiguous()
    dev, world = _comm_device(), get_world_size()
    sizes = [int(s) for s in all_gather_objects(int(x.shape[0]))]
    tail = tuple(x.shape[1:])
    out = [torch.empty((s,) + tail, dtype=x.dtype) for s in sizes]
    for start in range(0, max(sizes), chunk_rows):
        rows = min(chunk_rows, max(sizes) - start)
        buf = torch.zeros((rows,) + tail, dtype=x.dtype, device=dev)
        mine = x[start:start + rows]
        buf[:mine.shape[0]] = mine.to(dev)
        parts = [torch.empty_like(buf) for _ in range(world)]
        dist.all_gather(parts, buf)
        for r, part in enumerate(parts):
            take = max(0, min(rows, sizes[r] - start))
            out[r][start:start + take] = part[:take].cpu()
    return torch.cat(out, 0)


def gather_features(local, chunk_rows: int = 4096):
    """The features of the whole image list, in its order, from every rank's contiguous shard.

    Args:
        local: this rank's :class:`common.eval.features.Features` of the records ``shard_range(n)`` (its
            ``indices`` relative to the shard, as :func:`common.eval.features.extract_features` gives over a
            loader of the shard), or a plain (n_r, ...) tensor.
    Returns:
        the same type with all N rows on every rank; ``indices`` shifted by each shard's start, i.e. positions
        in the full list. Alone: ``local`` itself.
    """
    if not is_distributed():
        return local
    if isinstance(local, torch.Tensor):
        return gather_rows(local, chunk_rows)
    sizes = all_gather_objects(int(local.feats.shape[0]))
    offset = sum(sizes[:get_rank()])
    ids = torch.from_numpy(np.stack([local.pids, local.camids, local.indices + offset], 1).astype(np.int64))
    ids = gather_rows(ids, chunk_rows).numpy()
    return type(local)(gather_rows(local.feats, chunk_rows), ids[:, 0].copy(), ids[:, 1].copy(), ids[:, 2].copy())
