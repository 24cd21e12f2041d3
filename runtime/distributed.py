"""Running the command line under `torchrun` or `accelerate launch`: who this process is, and how it loads a model.

Both launchers start one process per device and describe it in the environment (`RANK`, `WORLD_SIZE`,
`LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`). Two ways to use several processes:

- *tensor parallel* (`tensor`): every process holds a slice of every layer (transformers' tensor parallelism,
  `from_pretrained(..., distributed_config=DistributedConfig(tp_size=N))`, on the plan of the base model's config
  plus `MultiverseForCausalLM._tp_plan`). Every process steps the fork/merge engine in lockstep on the same
  prompts: attention runs on each process's own heads, the all-reduces and the gathered head give every process
  the same logits, so they choose the same tokens. Only the main process (rank 0) prints and writes files.
- *data parallel* (`data`): every process holds the whole model and decodes its share of the prompts
  (`evaluation/distributed.py` shards and merges).

Not part of the files that ship to the Hub: the CLI imports it.

Example:
    $ torchrun --nproc-per-node 2 -m multiverse.cli generate --model out/m --prompt "What is 12 * 13?"

    >>> launch = Launch.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    >>> launch.main, launch.distributed
    (False, True)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

PARALLEL_MODES = ("data", "tensor")
"""How several launched processes share the work (see the module doc)."""


@dataclass(frozen=True)
class Launch:
    """This process's place among the launched ones; one process (rank 0 of 1) without a launcher."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Launch:
        """Read `RANK`, `WORLD_SIZE` and `LOCAL_RANK` as torchrun and accelerate launch set them.

        >>> Launch.from_env({})
        Launch(rank=0, world_size=1, local_rank=0)
        """
        env = os.environ if environ is None else environ
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise ValueError(
                f"RANK/WORLD_SIZE/LOCAL_RANK must be integers, got {env.get('RANK')!r}/{env.get('WORLD_SIZE')!r}/"
                f"{env.get('LOCAL_RANK')!r}"
            ) from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ValueError(f"RANK {rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE {world})")
        return cls(rank, world, local)

    @property
    def main(self) -> bool:
        """Whether this process prints and writes files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, requested: str) -> str:
        """The device of this process: `cuda` becomes `cuda:LOCAL_RANK` when launched on several processes.

        >>> Launch(1, 2, 1).device("cuda"), Launch(1, 2, 1).device("cpu")
        ('cuda:1', 'cpu')
        """
        if self.distributed and requested == "cuda":
            return f"cuda:{self.local_rank}"
        return requested


def check_tensor_parallel(text_config: Any, tp_size: int) -> None:
    """One clear line when the model cannot be split `tp_size` ways: each process takes whole heads.

    `text_config` is the base model's config, as an object or as the `text_config` dict of config.json.

    >>> from transformers import Qwen2Config
    >>> check_tensor_parallel(Qwen2Config(num_attention_heads=4, num_key_value_heads=2), 3)
    Traceback (most recent call last):
    ValueError: tensor parallelism over 3 processes needs num_attention_heads (4) and num_key_value_heads (2) \
divisible by 3; launch a number of processes that divides them
    """
    if tp_size <= 1:
        return
    read = text_config.get if isinstance(text_config, Mapping) else lambda name: getattr(text_config, name, None)
    heads = read("num_attention_heads")
    sizes = {"num_attention_heads": heads, "num_key_value_heads": read("num_key_value_heads") or heads}
    if any(value % tp_size for value in sizes.values()):
        listed = " and ".join(f"{name} ({value})" for name, value in sizes.items())
        raise ValueError(
            f"tensor parallelism over {tp_size} processes needs {listed} divisible by {tp_size}; "
            "launch a number of processes that divides them"
        )


def tensor_parallel_kwargs(launch: Launch, text_config: Mapping[str, Any] | Any = None) -> dict[str, Any]:
    """`from_pretrained` keyword arguments that split the model over the launched processes ({} for one).

    transformers sets up the process group itself (gloo on CPU, nccl on CUDA) and places each process's
    slice on its `LOCAL_RANK` device, so the model must not be moved afterwards.

    >>> tensor_parallel_kwargs(Launch())
    {}
    """
    if not launch.distributed:
        return {}
    if text_config is not None:
        check_tensor_parallel(text_config, launch.world_size)
    try:
        from transformers import DistributedConfig
    except ImportError:  # older 5.x: the standalone argument
        return {"tp_plan": "auto"}
    return {"distributed_config": DistributedConfig(tp_size=launch.world_size)}


def parallelize(model, launch: Launch, device: str):
    """Split the decoder layers of a loaded (unsplit) model with torch's `parallelize_module` on its own TP plan.

    The fallback to transformers' tensor parallelism (`tensor_parallel_kwargs`), and the way to run the sharded
    (DTensor) code path on ONE device (N = 1): transformers leaves a `tp_size=1` model unsplit. Each rule of
    `model.tp_plan` on the attention and MLP projections becomes torch's `ColwiseParallel` or `RowwiseParallel`;
    the embeddings and the head stay whole (they may be one tied tensor). Joins the process group first.

    >>> model = parallelize(AutoModelForCausalLM.from_pretrained("out/m"), Launch.from_env(), "cpu")  # doctest: +SKIP
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    plan = {name: styles[style]() for name, style in (model.tp_plan or {}).items() if ".layers." in name}
    unknown = sorted({style for name, style in (model.tp_plan or {}).items() if ".layers." in name} - set(styles))
    if unknown or not plan:
        raise ValueError(f"{type(model).__name__}: no colwise/rowwise TP plan for its layers (found styles {unknown})")
    init_process_group(launch, device, even_alone=True)
    mesh = init_device_mesh(torch.device(device).type, (launch.world_size,))
    return parallelize_module(model, mesh, plan)


def init_process_group(launch: Launch, device: str, even_alone: bool = False) -> None:
    """Join the launched processes (gloo on CPU, nccl on CUDA) unless already joined.

    Nothing for one process, unless `even_alone` (a group of one, for DTensor; the launcher's MASTER_ADDR and
    MASTER_PORT, else this machine and a free port).
    """
    if (not launch.distributed and not even_alone) or torch.distributed.is_initialized():
        return
    if not launch.distributed and "MASTER_PORT" not in os.environ:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    torch.distributed.init_process_group(backend=backend, rank=launch.rank, world_size=launch.world_size)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gather_to_main(value: Any, launch: Launch) -> list[Any] | None:
    """Every process's `value` (any picklable object), in rank order, on the main process; None elsewhere.

    >>> gather_to_main({"a": 1}, Launch())
    [{'a': 1}]
    """
    if not launch.distributed:
        return [value]
    gathered: list[Any] | None = [None] * launch.world_size if launch.main else None
    torch.distributed.gather_object(value, gathered, dst=0)
    return gathered


def finish(launch: Launch) -> None:
    """Wait for every process, then leave the process group (quietly ends what `init_process_group` or TP began)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if launch.distributed:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


class LockstepModel:
    """Rank 0's handle on a tensor-parallel model: each `generate` call runs on every process.

    Before decoding, rank 0 broadcasts the call (tensors as CPU tensors) and its random number generator states
    (`torch.distributed.broadcast_object_list`); the other processes, in `follow`, set the same states and make
    the same call, so sampling draws the same tokens everywhere. Arguments that only rank 0 can use (`streamer`,
    `branch_callback`) stay on rank 0. Everything else reads through to the model. `close()` releases the others.
    For a server whose requests arrive on rank 0 only (`multiverse serve` under torchrun).

    >>> model = LockstepModel(model, launch) if launch.main else follow(model, launch)  # doctest: +SKIP
    """

    LOCAL_ONLY = ("streamer", "branch_callback")

    def __init__(self, model, launch: Launch):
        self.model = model
        self.launch = launch

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def generate(self, *args, **kwargs):
        local = {name: kwargs.pop(name) for name in self.LOCAL_ONLY if name in kwargs}
        if self.launch.distributed:
            call = (_to_cpu(args), _to_cpu(kwargs), _rng_states(self.model.device))
            torch.distributed.broadcast_object_list([("generate", call)], src=0)
        return self.model.generate(*args, **kwargs, **local)

    def close(self) -> None:
        """Tell the other processes that no call follows (they return from `follow`)."""
        if self.launch.distributed:
            torch.distributed.broadcast_object_list([("close", None)], src=0)


def follow(model, launch: Launch) -> None:
    """The other processes' side of `LockstepModel`: make every call rank 0 makes, until it closes."""
    while True:
        message: list[Any] = [None]
        torch.distributed.broadcast_object_list(message, src=0)
        kind, call = message[0]
        if kind == "close":
            return
        args, kwargs, states = call
        _set_rng_states(states, model.device)
        model.generate(*_to_device(args, model.device), **_to_device(kwargs, model.device))


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def _to_device(value: Any, device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _rng_states(device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_states(states: tuple[torch.Tensor, torch.Tensor | None], device) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


__all__ = [
    "PARALLEL_MODES",
    "Launch",
    "LockstepModel",
    "check_tensor_parallel",
    "finish",
    "follow",
    "gather_to_main",
    "init_process_group",
    "parallelize",
    "tensor_parallel_kwargs",
]
