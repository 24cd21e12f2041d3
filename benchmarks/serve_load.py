"""Load on a real `multiverse serve`: C concurrent streaming `openai` clients, closed loop, N requests.

For each concurrency C (default 1, 2, 4, 8, 16) it prints completion tokens/s, answers/min, TTFT p50/p95,
latency p50/p95 and how many answers are correct (`evaluation.grading.grade` on built-in task problems); then
the same prompts through static batched `generate()` in this process, and how many of its texts equal the
server's at C = 1. With `--baseline DIR` (a plain model folder, e.g. `LlamaForCausalLM` with its tokenizer and
chat template) it runs the same sweep against `transformers serve --continuous-batching DIR` on loopback, for
the comparison a user makes (issue 27). With `--faults` it also sends `--fault-requests` requests at
`--fault-concurrency` where a share of clients disconnect mid-stream and a share send malformed bodies, and
checks that the server stays up, every valid request is answered or refused with 503, `running` returns to 0
and RSS ends within 10% of its level after warm-up (exit 1 if a check fails).

The prompts are the demo's held-out problems: `--problems DIR/held_out.jsonl` of a finished demo, else the
same ones synthesized as `multiverse demo` does (seed, people and bags of `DemoSettings`). Tokens are the
delivered text re-tokenized with the model's tokenizer, the same count for every server.

    python benchmarks/serve_load.py --model runs/demo/multiverse-model --problems runs/demo/held_out.jsonl \\
        --requests 16 --concurrency 1,8 --max-tokens 384 --precision fp32 \\
        --baseline runs/demo/autoregressive-model --faults
    python benchmarks/serve_load.py --model /tmp/sm --requests 4 --concurrency 1,2 --max-tokens 32 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.arguments import OneLineParser  # noqa: E402


def counts(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4], each >= 1."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be an integer >= 1")
    return values


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="serve_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Multiverse model folder for `multiverse serve`")
    parser.add_argument(
        "--baseline", default=None, help="a plain model folder for `transformers serve --continuous-batching`"
    )
    parser.add_argument(
        "--baseline-cache-tokens", type=positive, default=16384,
        help="KV cache of the baseline server, in tokens (default 16384); without a bound it takes a share of RAM",
    )
    parser.add_argument(
        "--problems", default=None, help="held-out problems (JSONL, built-in task); default: the demo's"
    )
    parser.add_argument("--requests", type=positive, default=16, help="requests per concurrency (default 16)")
    parser.add_argument("--concurrency", type=counts, default=[1, 2, 4, 8, 16], help="clients, e.g. 1,2,4,8,16")
    parser.add_argument("--max-tokens", type=positive, default=384, help="max_tokens per request (default 384)")
    parser.add_argument("--max-running", type=positive, default=8, help="multiverse serve --max-running (default 8)")
    parser.add_argument("--max-waiting", type=positive, default=64, help="multiverse serve --max-waiting (default 64)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32", help="default fp32")
    parser.add_argument("--static-batch", type=positive, default=8, help="rows per static generate() batch (default 8)")
    parser.add_argument("--no-static", action="store_true", help="skip the static batched generate() run")
    parser.add_argument("--faults", action="store_true", help="also run the fault mode against multiverse serve")
    parser.add_argument("--fault-requests", type=positive, default=200, help="fault mode requests (default 200)")
    parser.add_argument("--fault-concurrency", type=positive, default=16, help="fault mode clients (default 16)")
    parser.add_argument("--disconnect-share", type=share, default=0.2, help="clients leaving mid-stream (default 0.2)")
    parser.add_argument("--malformed-share", type=share, default=0.1, help="malformed bodies (default 0.1)")
    parser.add_argument(
        "--fault-max-tokens", type=positive, default=None, help="fault mode max_tokens (default --max-tokens)"
    )
    parser.add_argument("--seed", type=int, default=0, help="which requests of the fault mode misbehave")
    parser.add_argument("--startup-timeout", type=positive, default=600, help="seconds a server may take to start")
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    for name in ("model", "baseline"):
        folder = getattr(args, name)
        if folder is not None and not (Path(folder) / "config.json").is_file():
            parser.error(f"--{name} {folder} is not a model folder (no config.json)")
    if args.problems is not None and not Path(args.problems).is_file():
        parser.error(f"--problems {args.problems} is not a file")
    if args.baseline is not None and shutil.which("transformers") is None:
        parser.error("--baseline needs the `transformers` command (transformers >= 5 with its serving extra)")
    if args.json is not None and (Path(args.json).is_dir() or not Path(args.json).resolve().parent.is_dir()):
        parser.error(f"--json {args.json}: needs a file in an existing folder (the report is written at the end)")
    if args.disconnect_share + args.malformed_share > 1:
        parser.error("--disconnect-share + --malformed-share must be <= 1")
    try:
        import openai  # noqa: F401
    except ImportError:
        parser.error("the openai client is missing: pip install -e '.[serve]'")
    return args


# ----------------------------------------------------------------------------------------------
# Problems and prompts


def held_out_problems(path: str | None, limit: int) -> list[dict]:
    """Normalised built-in task records: from `path`, else the demo's held-out problems synthesized again."""
    from evaluation.evaluate import load_records, normalize_record

    if path is not None:
        return load_records(path, "builtin", limit)[0]
    from curator.synth import synthesize
    from multiverse.demo import DemoSettings

    settings = DemoSettings()
    n = settings.n_train + settings.n_eval
    rows = synthesize(n, settings.seed, k=settings.parts, bags=settings.bags, task="most")
    held_out = rows[settings.n_train :][:limit]
    return [normalize_record(row, "builtin", i, "synthesized held-out") for i, row in enumerate(held_out)]


def message(record: dict) -> str:
    """The user turn `multiverse eval` and the demo give both models (the parallel instruction included)."""
    from modeling_multiverse.prompts import user_turn

    return user_turn(record["question"], record["kind"], parallel=True)


# ----------------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


class Server:
    """A server process on 127.0.0.1: started, waited for, stopped."""

    def __init__(self, name: str, command: list[str], port: int, model_name: str, log: Path, timeout: int):
        self.name, self.port, self.model_name, self.log = name, port, model_name, log
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.handle = log.open("w")
        self.process = subprocess.Popen(command, stdout=self.handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while get_json(f"{self.url}/health", 2) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log.read_text()[-2000:]
                raise RuntimeError(f"{name} did not start (see {log}):\n{tail}")
            time.sleep(0.5)

    def health(self) -> dict | None:
        return get_json(f"{self.url}/health")

    def alive(self) -> bool:
        return self.process.poll() is None and self.health() is not None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.handle.close()


def multiverse_server(args, log_dir: Path) -> Server:
    port = free_port()
    command = [
        sys.executable, "-m", "multiverse.cli", "serve", "--model", args.model, "--port", str(port),
        "--max-running", str(args.max_running), "--max-waiting", str(args.max_waiting),
        "--precision", args.precision, "--max-new-tokens", str(args.max_tokens),
    ]
    log = log_dir / "multiverse-serve.log"
    return Server("multiverse serve", command, port, "multiverse", log, args.startup_timeout)


def baseline_server(args, log_dir: Path) -> Server:
    port = free_port()
    dtype = {"fp32": "float32", "bf16": "bfloat16", "auto": "auto"}[args.precision]
    command = [
        shutil.which("transformers"), "serve", str(Path(args.baseline).resolve()), "--continuous-batching",
        "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--log-level", "warning",
        "--cb-block-size", "32", "--cb-num-blocks", str(math.ceil(args.baseline_cache_tokens / 32)),
    ]
    name = "transformers serve --continuous-batching"
    return Server(name, command, port, str(Path(args.baseline).resolve()), log_dir / "transformers-serve.log",
                  args.startup_timeout)


# ----------------------------------------------------------------------------------------------
# Clients


@dataclass
class Outcome:
    """One request as its client saw it."""

    index: int
    status: str  # answered, refused (503), failed, left (disconnected on purpose), invalid (400 as meant)
    text: str = ""
    ttft_s: float | None = None
    latency_s: float | None = None
    detail: str = ""
    retry_after_s: float = 0.0  # what a 503 asked for


def stream_one(
    client, model_name: str, index: int, content: str, max_tokens: int, leave_after: int | None = None
) -> Outcome:
    """One streamed chat; `leave_after`: close the stream after that many text chunks (a client that leaves)."""
    import openai

    start = time.perf_counter()
    first, parts = None, []
    try:
        stream = client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, stream=True
        )
        for chunk in stream:
            piece = chunk.choices[0].delta.content if chunk.choices else None
            if piece:
                first = first or time.perf_counter()
                parts.append(piece)
                if leave_after is not None and len(parts) >= leave_after:
                    stream.close()
                    return Outcome(index, "left", "".join(parts))
    except openai.APIStatusError as err:
        status = "refused" if err.status_code == 503 else "failed"
        try:
            retry = float(err.response.headers.get("retry-after", 0))
        except ValueError:
            retry = 0.0
        return Outcome(index, status, detail=f"{err.status_code}: {str(err)[:200]}", retry_after_s=retry)
    except openai.APIError as err:
        return Outcome(index, "failed", detail=str(err)[:200])
    end = time.perf_counter()
    if leave_after is not None:
        return Outcome(index, "answered", "".join(parts), None if first is None else first - start, end - start,
                       detail="finished before the client could leave")
    return Outcome(index, "answered", "".join(parts), None if first is None else first - start, end - start)


def malformed_one(url: str, index: int, rng: random.Random) -> Outcome:
    """A malformed body; the server must answer 400."""
    import httpx

    body = rng.choice([b"{not json", b"[]", b'{"messages": 3}', b'{"messages": [{"role": "user", "content": 1}]}',
                       b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -4}'])
    try:
        answer = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"content-type": "application/json"},
                            timeout=60)
    except httpx.HTTPError as err:
        return Outcome(index, "failed", detail=f"malformed body: {err}")
    if answer.status_code == 400:
        return Outcome(index, "invalid")
    return Outcome(index, "failed", detail=f"malformed body answered {answer.status_code}")


def closed_loop(n: int, concurrency: int, work) -> tuple[list[Outcome], float]:
    """`concurrency` threads take request indices 0..n-1 in turn, each starting its next when one ends."""
    indices = itertools.count()
    lock = threading.Lock()
    outcomes: list[Outcome] = []

    def client_loop() -> None:
        while True:
            with lock:
                index = next(indices)
            if index >= n:
                return
            try:
                outcome = work(index)
            except Exception as err:  # noqa: BLE001 (a client-side error is a failed request, not a lost one)
                outcome = Outcome(index, "failed", detail=f"{type(err).__name__}: {err}"[:200])
            with lock:
                outcomes.append(outcome)

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes, key=lambda o: o.index), time.perf_counter() - start


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(outcomes: list[Outcome], wall_s: float, records: list[dict], tokenizer) -> dict:
    """Throughput, latency percentiles and correctness of one sweep point."""
    from evaluation.grading import grade

    answered = [o for o in outcomes if o.status == "answered"]
    tokens = sum(len(tokenizer(o.text, add_special_tokens=False)["input_ids"]) for o in answered)
    ttft = [o.ttft_s for o in answered if o.ttft_s is not None]
    latency = [o.latency_s for o in answered if o.latency_s is not None]
    correct = sum(grade(o.text, records[o.index % len(records)]["answer"], "builtin") for o in answered)
    return {
        "requests": len(outcomes),
        "answered": len(answered),
        "refused": sum(o.status == "refused" for o in outcomes),
        "failed": sum(o.status == "failed" for o in outcomes),
        "correct": correct,
        "wall_s": round(wall_s, 3),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall_s, 2),
        "answers_per_min": round(len(answered) / wall_s * 60, 2),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "latency_p50_s": percentile(latency, 50),
        "latency_p95_s": percentile(latency, 95),
        "errors": sorted({o.detail for o in outcomes if o.status == "failed"})[:5],
    }


def sweep(server: Server, args, records: list[dict], tokenizer) -> dict[int, dict]:
    """Warm up with one request, then each concurrency in turn; returns {C: summary + texts}."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=3600)
    stream_one(client, server.model_name, 0, message(records[0]), min(args.max_tokens, 16))
    results = {}
    for concurrency in args.concurrency:
        outcomes, wall = closed_loop(
            args.requests, concurrency,
            lambda i: stream_one(client, server.model_name, i, message(records[i % len(records)]), args.max_tokens),
        )
        summary = summarize(outcomes, wall, records, tokenizer)
        summary["texts"] = [o.text for o in outcomes]
        results[concurrency] = summary
        print(row(server.name, f"C={concurrency}", summary), flush=True)
    return results


def static_generate(args, records: list[dict], tokenizer) -> dict:
    """The same prompts through `generate()` in static batches of `--static-batch`, in this process."""
    import torch

    from evaluation.evaluate import encode_prompts, generate_batch, trim_response
    from evaluation.grading import grade
    from multiverse.serve import load
    from runtime.precision import choose_precision

    model, tokenizer = load(args.model, choose_precision(args.precision).dtype)
    eos = model.generation_config.eos_token_id
    stop = {tokenizer.eos_token_id} | set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    chosen = [records[i % len(records)] for i in range(args.requests)]
    texts: list[str] = []
    with torch.inference_mode():  # warm-up, as the servers had
        generate_batch(model, tokenizer, encode_prompts(tokenizer, chosen[:1], True, model.device), 4, pad)
    start = time.perf_counter()
    with torch.inference_mode():
        for at in range(0, len(chosen), args.static_batch):
            batch = chosen[at : at + args.static_batch]
            encoded = encode_prompts(tokenizer, batch, True, model.device)
            rows, _, _ = generate_batch(model, tokenizer, encoded, args.max_tokens, pad)
            texts += [tokenizer.decode(trim_response(ids, stop)[0]) for ids in rows]
    wall = time.perf_counter() - start
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return {
        "requests": len(texts),
        "answered": len(texts),
        "correct": sum(grade(t, r["answer"], "builtin") for t, r in zip(texts, chosen)),
        "wall_s": round(wall, 3),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "answers_per_min": round(len(texts) / wall * 60, 2),
        "texts": texts,
    }


def faults(server: Server, args, records: list[dict]) -> dict:
    """Misbehaving clients against a warm server; the checks of issue 22's fault target."""
    import httpx  # noqa: F401 (imported here, once: importing it from several threads at once races)
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=3600)
    rss_warm = server.health()["rss_mb"]
    rng = random.Random(args.seed)
    malformed = round(args.malformed_share * args.fault_requests)  # exact shares, in a shuffled order
    leave = round(args.disconnect_share * args.fault_requests)
    kinds = ["malformed"] * malformed + ["leave"] * leave + ["valid"] * (args.fault_requests - malformed - leave)
    rng.shuffle(kinds)
    max_tokens = args.fault_max_tokens or args.max_tokens

    def work(index: int) -> Outcome:
        content = message(records[index % len(records)])
        if kinds[index] == "malformed":
            return malformed_one(server.url, index, random.Random(args.seed * 1000 + index))
        leave = 1 + index % 4 if kinds[index] == "leave" else None
        outcome = stream_one(client, server.model_name, index, content, max_tokens, leave)
        if outcome.status == "refused":  # a polite client waits as asked (at most 5 s) before its next request
            time.sleep(min(outcome.retry_after_s, 5.0))
        return outcome

    outcomes, wall = closed_loop(args.fault_requests, args.fault_concurrency, work)
    deadline = time.monotonic() + 120
    while (health := server.health()) is not None and health["running"] + health["waiting"]:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    health = server.health()
    valid = [o for o in outcomes if kinds[o.index] == "valid"]
    malformed = [o for o in outcomes if kinds[o.index] == "malformed"]
    rss_end = None if health is None else health["rss_mb"]
    checks = {
        "server stays up": server.alive(),
        "every valid request answered or refused with 503": all(o.status in ("answered", "refused") for o in valid),
        "every malformed body answered 400": all(o.status == "invalid" for o in malformed),
        "running returns to 0": health is not None and health["running"] == 0 and health["waiting"] == 0,
        "RSS within 10% of its level after warm-up": rss_end is not None and rss_end <= 1.1 * rss_warm,
    }
    return {
        "requests": args.fault_requests,
        "concurrency": args.fault_concurrency,
        "valid": len(valid),
        "answered": sum(o.status == "answered" for o in valid),
        "refused": sum(o.status == "refused" for o in valid),
        "left": sum(k == "leave" for k in kinds),
        "malformed": len(malformed),
        "wall_s": round(wall, 2),
        "rss_mb_after_warm_up": rss_warm,
        "rss_mb_end": rss_end,
        "health_end": health,
        "errors": sorted({o.detail for o in outcomes if o.status == "failed"})[:5],
        "checks": checks,
    }


# ----------------------------------------------------------------------------------------------
# Output


HEADER = (
    f"{'server':<44} {'run':>8} {'ok/N':>7} {'503':>4} {'tok/s':>8} {'ans/min':>8} {'TTFT p50':>9} {'p95':>7} "
    f"{'lat p50':>8} {'p95':>7} {'correct':>8}"
)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def row(name: str, run: str, s: dict) -> str:
    return (
        f"{name:<44} {run:>8} {s['answered']:>3}/{s['requests']:<3} {s.get('refused', 0):>4} "
        f"{s['tokens_per_s']:>8.1f} {s['answers_per_min']:>8.1f} {seconds(s.get('ttft_p50_s')):>9} "
        f"{seconds(s.get('ttft_p95_s')):>7} {seconds(s.get('latency_p50_s')):>8} {seconds(s.get('latency_p95_s')):>7} "
        f"{s['correct']:>3}/{s['answered']:<4}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    records = held_out_problems(args.problems, args.requests)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    with tempfile.TemporaryDirectory(prefix="serve_load-") as logs:  # a server that fails shows its log's tail
        return run(args, records, tokenizer, Path(logs))


def run(args: argparse.Namespace, records: list[dict], tokenizer, log_dir: Path) -> int:
    """The sweeps, the static run, the baseline and the fault mode; prints the table; returns the exit status."""
    from transformers import AutoTokenizer

    from runtime.paths import write_text_atomic
    from runtime.precision import hardware_line, hardware_report

    report: dict = {"hardware": hardware_line(hardware_report("cpu")), "settings": {
        k: v for k, v in vars(args).items() if k != "json"}, "servers": {}}
    print(f"# {report['hardware']}; {len(records)} problems, {args.requests} requests per run, "
          f"max_tokens {args.max_tokens}, {args.precision}; numbers from one run", flush=True)
    print(HEADER, flush=True)
    status = 0
    server = multiverse_server(args, log_dir)
    try:
        report["servers"]["multiverse serve"] = sweep(server, args, records, tokenizer)
        if args.faults:
            result = report["faults"] = faults(server, args, records)
            print(
                f"# faults: {result['requests']} requests at C={result['concurrency']}: {result['valid']} valid "
                f"({result['answered']} answered, {result['refused']} refused 503), {result['left']} left "
                f"mid-stream, {result['malformed']} malformed; "
                f"RSS {result['rss_mb_after_warm_up']} -> {result['rss_mb_end']} MiB",
                flush=True,
            )
            for check, ok in result["checks"].items():
                print(f"#   {'ok  ' if ok else 'FAIL'} {check}", flush=True)
            status = 0 if all(result["checks"].values()) else 1
    finally:
        server.stop()
    if not args.no_static:
        static = report["static generate"] = static_generate(args, records, tokenizer)
        first = report["servers"]["multiverse serve"][args.concurrency[0]]["texts"]
        static["same_text_as_server"] = sum(a == b for a, b in zip(static["texts"], first))
        same = f"  same text as the server at C={args.concurrency[0]}: {static['same_text_as_server']}/{len(first)}"
        print(row("generate(), static batches", f"B={args.static_batch}", static) + same, flush=True)
        for c, run in report["servers"]["multiverse serve"].items():  # greedy: a request's text whatever runs beside it
            run["same_text_as_static"] = sum(a == b for a, b in zip(run["texts"], static["texts"]))
        print("# multiverse serve texts equal to static generate(): " + ", ".join(
            f"C={c} {run['same_text_as_static']}/{len(run['texts'])}"
            for c, run in report["servers"]["multiverse serve"].items()), flush=True)
    if args.baseline is not None:
        baseline = baseline_server(args, log_dir)
        try:
            base_tokenizer = AutoTokenizer.from_pretrained(args.baseline)
            report["servers"][baseline.name] = sweep(baseline, args, records, base_tokenizer)
        finally:
            baseline.stop()
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(report, indent=2, default=str) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
