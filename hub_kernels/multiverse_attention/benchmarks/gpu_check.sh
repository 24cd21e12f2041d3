#!/usr/bin/env bash
# One-shot GPU check of the Multiverse attention kernels: environment, correctness tests on CUDA,
# then the timing table (benchmark.py). Needs torch and Triton already installed; under 5 minutes.
# Nothing stops at the first failure: every step reports, and the script exits non-zero if any failed.
#   bash hub_kernels/multiverse_attention/benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/../../.."  # repository root
status=0

echo "== environment"
if ! python -c 'import torch, triton; print("torch", torch.__version__, "| triton", triton.__version__, "| cuda", torch.version.cuda, "| gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'; then
    echo "FAILED: torch and triton must both import"; exit 1
fi
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "FAILED: no CUDA device visible")' || exit 1
for module in kernels transformers pytest; do
    python -c "import $module; print('$module', getattr($module, '__version__', '?'))" 2>/dev/null || echo "$module: not installed (its tests are left out)"
done
unset TRITON_INTERPRET

echo "== correctness on CUDA (pytest -k kernel, at most 90 s)"
if python -c 'import pytest, kernels' 2>/dev/null; then
    timeout 90 python -m pytest -q -k kernel -p no:cacheprovider --continue-on-collection-errors hub_kernels || { echo "FAILED: kernel tests"; status=1; }
else
    echo "pytest or kernels missing: correctness is checked by the benchmark's max-error column only"
fi

echo "== timings (benchmark.py, at most 170 s; rows print as they are measured)"
timeout 170 python hub_kernels/multiverse_attention/benchmarks/benchmark.py || { echo "FAILED or timed out: benchmark"; status=1; }
exit $status
