"""torchrun helpers: one process group per run (gloo on CPU, nccl on CUDA), no-ops when single-process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun set up in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    return DistInfo(rank, world, local)


class DeviceError(ValueError):
    """A ``--device`` value that names no device usable on this machine."""


DEVICE_CHOICES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def resolve_device(device: str, info: DistInfo | None = None) -> torch.device:
    """The one ``--device`` resolver: ``auto`` picks CUDA when present; under torchrun ``cuda`` is the local GPU.

    Raises ``DeviceError`` (a ``ValueError`` naming the option) for a malformed value or a device this
    machine does not have, before anything is loaded or written.
    """
    spec = str(device).strip()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(spec)
    except (RuntimeError, ValueError, TypeError) as err:
        raise DeviceError(f"--device {device}: not a device; use {DEVICE_CHOICES}") from err
    if resolved.type == "cpu":
        return torch.device("cpu")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        if resolved.index is None and info is not None and info.enabled:
            return torch.device("cuda", info.local_rank)
        return resolved
    if resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"--device {device}: Apple MPS is not available on this machine; use --device cpu")
        return resolved
    raise DeviceError(f"--device {device}: unsupported device type {resolved.type!r}; use {DEVICE_CHOICES}")


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over processes (returns it unchanged when single-process)."""
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: object, info: DistInfo) -> object:
    """The main process's ``obj`` on every process (returns it unchanged when single-process)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
