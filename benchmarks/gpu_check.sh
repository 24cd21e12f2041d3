#!/usr/bin/env bash
# One GPU check of the Multiverse stack, under 10 minutes on one H100/H200 (every step has a hard time limit):
#   1. environment   versions; modules the steps need, installed from --wheels DIR (no network) where missing
#   2. engine        benchmarks/engine_gpu.py on Qwen2.5-1.5B shapes, batches 1, 8, 32 (bf16)        <= 210 s
#   3. exactness     benchmarks/gpu_exactness.py: fp32 engine == one full forward; bf16 within 0.25 nats of
#                    fp32's best token (stated in the script)                                          <= 90 s
#   4. tp            torchrun --nproc-per-node N benchmarks/tp_check.py (N = --tp, default 1): split model,
#                    same greedy tokens as one process, forks and merges included                      <= 90 s
#   5. serve_load    benchmarks/serve_load.py at C = 32 against `multiverse serve` on a random model of
#                    the same shapes, where that script exists (SERVE_LOAD_ARGS overrides the flags)    <= 120 s
#   6. report        benchmarks/gpu_report.py: OUT/gpu_check.json and OUT/gpu_check.md
# Nothing stops at the first failure; the exit status is non-zero if a step failed.
#
# The GPU image has torch 2.11 and transformers 5.17, no trl, no `kernels`, no network. The engine step needs
# matplotlib; serve_load needs fastapi, uvicorn and openai (with httpx). Carry their wheels (see docs/scaling.md):
#   pip download --dest wheels --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 matplotlib ...
#   bash benchmarks/gpu_check.sh --wheels wheels --out out/gpu_check
# --dry-run prints the plan, checks that every script exists and parses the flags given to it (--help), then
# runs each step's CPU dry run (tiny shapes) and the report, in under a minute; the CPU test suite runs it.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--wheels DIR] [--tp N]
set -u
cd "$(dirname "$0")/.."  # repository root
OUT=benchmarks/gpu_check_out
WHEELS=""
TP=1
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT="${2:?--out needs a folder}"; shift ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift ;;
        --tp) TP="${2:?--tp needs a number}"; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$TP" in ''|*[!0-9]*|0) echo "gpu_check.sh: --tp must be a positive integer, got $TP" >&2; exit 2 ;; esac
if [ -n "$WHEELS" ] && [ ! -d "$WHEELS" ]; then echo "gpu_check.sh: --wheels $WHEELS: no such folder" >&2; exit 2; fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python}
mkdir -p "$OUT"
: > "$OUT/steps.tsv"
status=0

# step NAME LIMIT COMMAND...: run it under a time limit, record "name<TAB>status<TAB>seconds<TAB>command"
step() {
    local name=$1 limit=$2; shift 2
    echo "== $name (at most ${limit} s): $*"
    local start=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    [ $rc -eq 124 ] && echo "FAILED: $name ran past ${limit} s"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && echo "FAILED: $name (exit $rc)"
    [ $rc -ne 0 ] && status=1
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$*" >> "$OUT/steps.tsv"
}
skip() {  # skip NAME WHY FAILS(0|1)
    echo "== $1: skipped ($2)"
    printf '%s\t%s\t0\t%s\n' "$1" "skipped" "$2" >> "$OUT/steps.tsv"
    [ "$3" = 1 ] && status=1
}
has() { "$PY" -c "import $1" 2>/dev/null; }
need() {  # need MODULE...: import them, installing missing ones from --wheels; false if one stays missing
    local module
    for module in "$@"; do
        if ! has "$module" && [ -n "$WHEELS" ]; then
            "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$module" >/dev/null 2>&1 || true
        fi
        has "$module" || { echo "missing: $module"; return 1; }
    done
}

SERVE_LOAD=benchmarks/serve_load.py
LOAD_MODEL="$OUT/serve_model"
if [ $DRY -eq 1 ]; then
    ENGINE_ARGS=(--dry-run --workloads nested --batches 1 --out "$OUT/engine_gpu")
    EXACT_ARGS=(--dry-run --out "$OUT/exactness.json")
    TP_ARGS=(--dry-run --out "$OUT/tp.json")
else
    ENGINE_ARGS=(--models qwen2.5-1.5b --batches 1,8,32 --out "$OUT/engine_gpu")
    EXACT_ARGS=(--out "$OUT/exactness.json")
    TP_ARGS=(--out "$OUT/tp.json")
fi
# shellcheck disable=SC2206  # SERVE_LOAD_ARGS is split on spaces on purpose
LOAD_ARGS=(${SERVE_LOAD_ARGS:---model $LOAD_MODEL --concurrency 32 --requests 64 --max-tokens 128 --precision bf16 --no-static --startup-timeout 60 --json $OUT/serve_load.json})

echo "== plan (out: $OUT, tp: $TP, dry run: $DRY)"
echo "  engine      $PY benchmarks/engine_gpu.py ${ENGINE_ARGS[*]}"
echo "  exactness   $PY benchmarks/gpu_exactness.py ${EXACT_ARGS[*]}"
echo "  tp          $PY -m torch.distributed.run --standalone --nproc-per-node $TP benchmarks/tp_check.py ${TP_ARGS[*]}"
if [ -f "$SERVE_LOAD" ]; then echo "  serve_load  $PY $SERVE_LOAD ${LOAD_ARGS[*]}"; else echo "  serve_load  ($SERVE_LOAD absent: skipped)"; fi
echo "  report      $PY benchmarks/gpu_report.py $OUT"

echo "== environment"
"$PY" -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "| torch", torch.__version__, "| transformers", transformers.__version__, "| cuda", torch.version.cuda, "| gpus", torch.cuda.device_count(), "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")' || { echo "FAILED: torch and transformers must import"; exit 1; }
if [ $DRY -eq 0 ]; then
    "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "FAILED: no CUDA device visible (use --dry-run on CPU)")' || exit 1
    gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
    [ "$TP" -le "$gpus" ] || { echo "FAILED: --tp $TP needs $TP GPUs, $gpus visible"; exit 1; }
fi

# every script exists and takes the flags it is given
check_args() {  # check_args SCRIPT FLAG...: the script's --help lists every flag
    local script=$1; shift
    [ -f "$script" ] || { echo "FAILED: $script is missing"; status=1; return 1; }
    local help
    help=$("$PY" "$script" --help 2>&1) || { echo "FAILED: $script --help"; echo "$help" | tail -5; status=1; return 1; }
    local flag
    for flag in "$@"; do
        case "$flag" in --*) grep -q -- "${flag%%=*}" <<< "$help" || { echo "FAILED: $script has no $flag"; status=1; return 1; } ;; esac
    done
    echo "ok: $script takes $*"
}
check_args benchmarks/engine_gpu.py "${ENGINE_ARGS[@]}"
check_args benchmarks/gpu_exactness.py "${EXACT_ARGS[@]}"
check_args benchmarks/tp_check.py "${TP_ARGS[@]}"
check_args benchmarks/gpu_report.py
[ -f "$SERVE_LOAD" ] && check_args "$SERVE_LOAD" "${LOAD_ARGS[@]}"

if need matplotlib; then
    step engine 210 "$PY" benchmarks/engine_gpu.py "${ENGINE_ARGS[@]}"
else
    skip engine "needs matplotlib: pass --wheels DIR" 1
fi
step exactness 90 "$PY" benchmarks/gpu_exactness.py "${EXACT_ARGS[@]}"
step tp 90 "$PY" -m torch.distributed.run --standalone --nproc-per-node "$TP" benchmarks/tp_check.py "${TP_ARGS[@]}"
if [ ! -f "$SERVE_LOAD" ]; then
    skip serve_load "$SERVE_LOAD absent" 0
elif [ $DRY -eq 1 ]; then
    skip serve_load "dry run: its flags were checked above" 0
elif need fastapi uvicorn openai httpx; then
    if [ -z "${SERVE_LOAD_ARGS:-}" ]; then  # a random Multiverse model with the engine step's shapes
        "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; import tp_check; tp_check.build(Path('$LOAD_MODEL'), dry_run=False, dtype=tp_check.torch.bfloat16)" \
            || echo "FAILED: building the serve_load model"
    fi
    step serve_load 120 "$PY" "$SERVE_LOAD" "${LOAD_ARGS[@]}"
else
    skip serve_load "needs fastapi, uvicorn, openai, httpx: pass --wheels DIR" 1
fi
rm -rf "$LOAD_MODEL"
"$PY" benchmarks/gpu_report.py "$OUT" > /dev/null || { echo "FAILED: report"; status=1; }
cat "$OUT/gpu_check.md"
echo "== wrote $OUT/gpu_check.json and $OUT/gpu_check.md (exit $status)"
exit $status
