"""What the demo's stages cost on this machine: one decode step by its width, and training tokens per second.

The demo's time goes to two things: training (forward + backward + AdamW over packed rows) and decoding
(one forward pass per step, as many query rows as live branches). This prints both for SmolLM2-135M's
shape with random weights (timing does not depend on them), in the precision `--precision` picks:
- decode: ms per step for 1..N query rows on a cache of `--context` tokens. On a compute-bound CPU a
  step of 5 rows costs nearly 5 steps of 1 row: the engine's wall-clock gain comes from the part of a
  step that does not grow with its width (reading the weights, the Python around each layer);
- train: tokens per second of one optimizer step on one row of `--length` tokens, with every parameter
  trained and with only the top `--train-layers` decoder layers, the norm and the embeddings (frozen
  lower layers need no backward).
Each number is the best of `--repeats`, with wall and process CPU seconds. On a shared machine the wall
time counts the other processes, and several threads spin waiting for each other: `--threads 1` and its
CPU seconds measure the work itself. The first line names the hardware.

    python benchmarks/demo_costs.py
    python benchmarks/demo_costs.py --rows 1 4 8 16 32 --context 256 --length 512 --train-layers 0 4 30
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicCache

from runtime.precision import PRECISIONS, choose_precision, hardware_line, hardware_report

SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True, rope_theta=100000.0,
)


def best_of(repeats: int, fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of the fastest of `repeats` calls."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


@torch.inference_mode()
def decode_step(model, rows: int, context: int, repeats: int) -> tuple[float, float]:
    cache = DynamicCache(config=model.config)
    prefix = torch.randint(0, model.config.vocab_size, (rows, context))
    model(input_ids=prefix, past_key_values=cache, use_cache=True)
    new = torch.randint(0, model.config.vocab_size, (rows, 1))
    positions = torch.full((rows, 1), context)

    def step():
        model(input_ids=new, position_ids=positions, past_key_values=cache, use_cache=True)
        cache.crop(-1)

    return best_of(repeats, step)


def train_step(model, length: int, train_layers: int, repeats: int) -> tuple[float, float]:
    """One AdamW step with the top `train_layers` layers, the final norm and the tied embeddings trained
    (what `multiverse demo` trains with `train_layers`; all layers is full training)."""
    layers = model.model.layers
    model.requires_grad_(False)
    for layer in layers[len(layers) - train_layers :] if train_layers else []:
        layer.requires_grad_(True)
    model.model.norm.requires_grad_(True)
    model.get_input_embeddings().requires_grad_(True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(0, model.config.vocab_size, (1, length))

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return best_of(repeats, step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--context", type=int, default=256, help="cached tokens per row for the decode steps")
    parser.add_argument("--length", type=int, default=512, help="tokens in the training row")
    parser.add_argument("--train-layers", type=int, nargs="+", default=[30, 4], help="top decoder layers trained")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's); 1 measures CPU work robustly on a shared machine"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(hardware_line(hardware_report("cpu")))
    choice = choose_precision(args.precision, "cpu")
    print(f"precision {choice.name} ({choice.reason})")
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(choice.dtype).eval()
    print(f"\ndecode step, context {args.context}: rows | wall ms | cpu ms / {threads} threads | wall ms per row")
    for rows in args.rows:
        wall, cpu = decode_step(model, rows, args.context, args.repeats)
        print(f"  {rows:4d} | {wall * 1e3:8.1f} | {cpu / threads * 1e3:8.1f} | {wall * 1e3 / rows:6.1f}")
    model.train()
    print(
        f"\ntraining step, one row of {args.length} tokens: layers trained | wall s | cpu s / {threads} | "
        "tokens/s (cpu)"
    )
    for layers in args.train_layers:
        wall, cpu = train_step(model, args.length, layers, args.repeats)
        print(f"  {layers:4d} | {wall:6.2f} | {cpu / threads:6.2f} | {args.length / (cpu / threads):6.1f}")


if __name__ == "__main__":
    main()
