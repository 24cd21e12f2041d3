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

import itertools
import os
import pickle
import random
import threading
from collections.abc import Callable, Mapping
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


class LockstepEngine:
    """Rank 0's handle on a `serving.ContinuousEngine` whose model is split over the launched processes.

    Requests reach rank 0 only (a server). Every process holds its own `ContinuousEngine` over its slice of the
    model; rank 0 applies `add_request` and `cancel` at once, as one process does, and records them as ops. At
    the start of each step (`ContinuousEngine.step(boundary=...)`, under the engine's lock, before waiting
    requests are admitted and cancels are seen) it broadcasts the ops recorded since the last step
    (`torch.distributed.broadcast_object_list`), and the other processes (`follow_engine`) apply the same ops at
    the same point, then step: every process runs the same requests in the same forward passes. Request ids are
    rank 0's. `streamer` and `branch_callback` stay on rank 0; a sampled request without a seed gets one here, so
    every process draws the same tokens. Everything else (`running`, `waiting`, `stats`, `engine`, ...) reads
    through to the local engine. `close()` releases the others.

    >>> engine = LockstepEngine(ContinuousEngine(model, tokenizer), launch)  # rank 0  # doctest: +SKIP
    >>> follow_engine(ContinuousEngine(model, tokenizer), launch)  # ranks 1..N-1  # doctest: +SKIP
    """

    LOCAL_ONLY = ("streamer", "branch_callback")
    HEARTBEAT_S = 60.0
    """An idle server steps this often (an empty step: a broadcast, no forward pass), so that the other
    processes, waiting in the broadcast, never reach the collectives' timeout (30 min by default with gloo, 10
    with nccl). A heartbeat rather than a longer timeout: transformers creates the process group, with its own."""

    def __init__(self, engine, launch: Launch, renew: Callable[[], Any] | None = None):
        self.local = engine
        self.launch = launch
        self.renew = renew or _same_engine(engine)
        self.ops: list[tuple] = []  # recorded since the last step, under `local.lock`
        self.step_lock = threading.Lock()  # one step or the close message at a time: their collectives never mix
        self.closed = False
        self.heartbeat_s = self.HEARTBEAT_S

    def __getattr__(self, name: str):
        if name == "local":  # not set yet (unpickling, a failed __init__): no recursion
            raise AttributeError(name)
        return getattr(self.local, name)

    def add_request(self, input_ids, seed: int | None = None, **kwargs):
        """`ContinuousEngine.add_request`, applied here and on every process at the next step (same id)."""
        prompt = torch.as_tensor(input_ids).reshape(-1).tolist()
        if kwargs.get("do_sample") and seed is None:
            seed = random.getrandbits(63)  # drawn once, here: each process's torch.seed() would differ
        shared = {name: value for name, value in kwargs.items() if name not in self.LOCAL_ONLY}
        blob = pickle.dumps((prompt, {**shared, "seed": seed}))  # now: an argument that does not pickle fails here
        with self.local.lock:  # the op joins the list of the same step the request joins here
            request = self.local.add_request(prompt, seed=seed, **kwargs)
            self.ops.append(("add", request.id, blob))
        return request

    def cancel(self, request) -> bool:
        """`ContinuousEngine.cancel`, applied here and on every process at the next step."""
        with self.local.lock:
            left = self.local.cancel(request)
            self.ops.append(("cancel", request.id))
        return left

    def step(self) -> list:
        """One step on every process: the ops recorded since the last one first (an idle engine: no forward)."""
        with self.step_lock:
            if self.closed:
                return []
            return self.local.step(boundary=self._broadcast)

    def reset(self) -> LockstepEngine:
        """After a failed step: a fresh local engine here, and on every process at the next step; returns self.

        What the old engine held is dropped (its requests failed), ops not yet sent with it.
        """
        with self.local.lock:
            fresh = self.renew()
            fresh.ids = self.local.ids  # ids stay unique over the server's life
            self.local, self.ops = fresh, [("reset",)]
        return self

    def close(self) -> None:
        """Tell the other processes that no step follows (they return from `follow_engine`); steps end here."""
        with self.step_lock:
            if self.closed:
                return
            self.closed = True
            if self.launch.distributed:
                torch.distributed.broadcast_object_list([("close", None)], src=0)

    def _broadcast(self) -> None:
        ops, self.ops = self.ops, []
        if self.launch.distributed:
            torch.distributed.broadcast_object_list([("ops", ops)], src=0)


class _Closed(Exception):
    """Rank 0 closed: leave the step before it starts."""


class _Renewed(Exception):
    """Rank 0 reset: leave the old engine's step; the fresh engine, its ops applied, steps instead."""


def follow_engine(engine, launch: Launch, renew: Callable[[], Any] | None = None) -> None:
    """The other processes' side of `LockstepEngine`: step `engine` with rank 0's ops until rank 0 closes.

    A step that fails here expects rank 0's to have failed too: the next ops then begin with a reset (a fresh
    engine, from `renew`); otherwise the processes are out of step, and this raises.

    >>> follow_engine(ContinuousEngine(model, tokenizer), Launch.from_env())  # ranks 1..N-1  # doctest: +SKIP
    """
    renew = renew or _same_engine(engine)
    requests: dict[int, Any] = {}  # rank 0's id -> this process's request, while it runs or waits
    failed: list[str] = []

    def apply() -> None:
        nonlocal engine
        message: list[Any] = [None]
        torch.distributed.broadcast_object_list(message, src=0)
        kind, ops = message[0]
        if kind == "close":
            raise _Closed
        renewed = bool(ops) and ops[0][0] == "reset"
        if failed and not renewed:
            raise RuntimeError(f"rank {launch.rank}: a step failed here but not on rank 0 ({failed[0]}): "
                               "the processes are out of step")
        failed.clear()
        if renewed:
            engine, ops = renew(), ops[1:]
            requests.clear()
        for op in ops:
            if op[0] == "add":
                _, request_id, blob = op
                prompt, kwargs = pickle.loads(blob)
                engine.ids = itertools.count(request_id)  # rank 0's id (a prompt it refused still took one)
                requests[request_id] = engine.add_request(prompt, **kwargs)
            else:  # cancel: one that already finished here is left as it is
                request = requests.get(op[1])
                if request is not None and not request.finished:
                    engine.cancel(request)
        if renewed:
            raise _Renewed

    boundary: Callable[[], None] | None = apply
    while True:
        try:
            engine.step(boundary=boundary)
            boundary = apply
        except _Closed:
            return
        except _Renewed:
            boundary = None  # this round's ops are in the fresh engine already: step it without a broadcast
            continue
        except Exception as err:  # noqa: BLE001 (rank 0's step failed too: its reset follows)
            failed.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
        for request_id in [i for i, r in requests.items() if r.finished]:
            del requests[request_id]


def _same_engine(engine) -> Callable[[], Any]:
    """A fresh engine like `engine`: the same model, tokenizer and `max_running`."""
    return lambda: type(engine)(engine.model, engine.tokenizer, max_running=engine.max_running)


__all__ = [
    "PARALLEL_MODES",
    "Launch",
    "LockstepEngine",
    "check_tensor_parallel",
    "finish",
    "follow_engine",
    "gather_to_main",
    "init_process_group",
    "parallelize",
    "tensor_parallel_kwargs",
]
