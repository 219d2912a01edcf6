"""Several processes, one model: torchrun setup, FSDP2 / DDP wrapping, rank-0 logging, the sharded sampler.

Spec section 5 (the official trainer uses DeepSpeed ZeRO; we use PyTorch's own FSDP2 `fully_shard` or DDP).
`torchrun --nproc-per-node N -m internvl train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; without them
everything runs in one process and no collective is ever called. CPU runs use the gloo backend, GPU runs
NCCL. Full (unsharded) model and optimizer states are gathered to rank 0 for saving, and loaded on every
rank before wrapping (model) or scattered from rank 0 (optimizer), so checkpoints do not depend on the
number of processes that wrote them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this run created the process group (and destroys it at the end)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the torchrun process group if there is one; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(kind, local) if kind == "cuda" else torch.device(kind)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local, dev, owns)


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


class _NotMainFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING  # other ranks keep only warnings and errors


def rank0_logging(info: DistInfo) -> None:
    """On ranks other than 0, drop INFO messages from the package's loggers."""
    if not info.is_main:
        logging.getLogger("internvl").addFilter(_NotMainFilter())
        for handler in logging.getLogger().handlers:
            handler.addFilter(_NotMainFilter())


def wrap_model(model: nn.Module, info: DistInfo, strategy: str, block_lists: list[nn.ModuleList],
               find_unused: bool = False) -> nn.Module:
    """FSDP2 (each block of `block_lists` sharded on its own, then the root) or DDP; unchanged in one process."""
    if not info.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for blocks in block_lists:
            for block in blocks:
                fully_shard(block)
        fully_shard(model)  # the root group: embeddings, projector, final norm, LM head
        return model
    if strategy == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)
    raise ConfigError(f"unknown parallel strategy {strategy!r}; use fsdp or ddp")


def unwrap(model: nn.Module) -> nn.Module:
    """The module DDP wraps (FSDP2 shards in place, so its model is itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def gradient_sync(model: nn.Module, sync: bool):
    """Context for one micro-batch's backward: gradients are reduced across ranks only when `sync`."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not sync:
        return model.no_sync()
    if is_fsdp(model):
        model.set_requires_gradient_sync(sync)
    return nullcontext()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks (in place); a no-op in one process."""
    if info.enabled:
        dist.all_reduce(t)
    return t


def all_gather_objects(obj: object, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: object, info: DistInfo) -> object:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------- full states for saving and resuming

def full_model_state(model: nn.Module, info: DistInfo) -> dict[str, torch.Tensor]:
    """The whole model's state dict on the CPU at rank 0 (other ranks get {}). Every rank must call it."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not info.is_main:
        return {}
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> dict:
    """Optimizer state keyed by parameter name (so any world size can load it), at rank 0."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not info.is_main:
        return {}
    names = _param_names(model, optimizer)
    sd = optimizer.state_dict()
    state = {names[i]: {k: v.cpu() if torch.is_tensor(v) else v for k, v in s.items()} for i, s in sd["state"].items()}
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, info: DistInfo) -> None:
    """Inverse of `full_optimizer_state`; under FSDP2 rank 0's copy is scattered to the shards."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, state if info.is_main else {},
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        return
    index = {n: i for i, n in _param_names(model, optimizer).items()}
    device = next(unwrap(model).parameters()).device
    sd = {"state": {index[n]: {k: v.to(device) if torch.is_tensor(v) and v.ndim else v for k, v in s.items()}
                    for n, s in state["state"].items()},
          "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}
    optimizer.load_state_dict(sd)


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """Optimizer state index -> parameter name (the optimizer numbers parameters group by group)."""
    by_id = {id(p): n for n, p in unwrap(model).named_parameters()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return {i: by_id[id(p)] for i, p in enumerate(params)}


# ---------------------------------------------------------------- data sharding

class StepBatchSampler:
    """Micro-batches of dataset indices for one rank, step after step, epoch after epoch, from any step.

    Each epoch is a seeded permutation of the dataset; one optimizer step consumes the next
    `micro_batch * accumulation * world` indices of it, rank r taking every world-th index starting at r, so
    the union over ranks is the same global batch whatever the world size. The tail that cannot fill a
    whole step is dropped (every rank runs the same number of micro-batches). The position is a pure function
    of the step, which is all a resumed run needs: no sample is loaded to skip ahead.
    """

    def __init__(self, num_samples: int, micro_batch: int, accumulation: int, info: DistInfo, seed: int,
                 start_step: int = 0, max_steps: int | None = None) -> None:
        self.n, self.micro, self.accum, self.info, self.seed = num_samples, micro_batch, accumulation, info, seed
        self.global_batch = micro_batch * accumulation * info.world_size
        self.steps_per_epoch = num_samples // self.global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the dataset has {num_samples} samples, fewer than one global batch of "
                              f"{self.global_batch} ({micro_batch} per device x {accumulation} accumulation x "
                              f"{info.world_size} processes)")
        self.start_step, self.max_steps = start_step, max_steps

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, index into that epoch's permutation) where `step` begins."""
        return step // self.steps_per_epoch, (step % self.steps_per_epoch) * self.global_batch

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while self.max_steps is None or step < self.max_steps:
            order = self.epoch_order(step // self.steps_per_epoch)
            for s in range(step % self.steps_per_epoch, self.steps_per_epoch):
                if self.max_steps is not None and step >= self.max_steps:
                    return
                chunk = order[s * self.global_batch:(s + 1) * self.global_batch]
                mine = chunk[self.info.rank::self.info.world_size]
                for m in range(self.accum):
                    yield mine[m * self.micro:(m + 1) * self.micro].tolist()
                step += 1

    def __len__(self) -> int:
        if self.max_steps is None:
            raise TypeError("an endless sampler has no length")
        return (self.max_steps - self.start_step) * self.accum
