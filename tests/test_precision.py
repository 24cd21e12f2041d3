"""Precision chosen by the hardware: bf16 only where it is native, the reason recorded, the matmul probe."""

import platform

import pytest
import torch
from trl import TrlParser

from runtime import precision
from runtime.precision import choose_precision, hardware_line, hardware_report, matmul_gflops, preferred_dtype
from trl_recipes.config import MultiverseModelConfig, MultiverseSFTConfig, RecipeArguments


@pytest.fixture(params=[False, True], ids=["avx2-cpu", "bf16-cpu"])
def cpu_bf16(request, monkeypatch):
    """Run a test as on a CPU without native bf16 (this project's 2-core EPYC) and as on one with it."""
    monkeypatch.setattr(precision, "_onednn_bf16", lambda: request.param)
    return request.param


def test_auto_picks_bf16_only_where_the_cpu_runs_it_natively(cpu_bf16):
    choice = choose_precision("auto", "cpu")
    assert choice.name == ("bf16" if cpu_bf16 else "fp32") and choice.requested == "auto"
    assert choice.dtype == preferred_dtype("cpu") == (torch.bfloat16 if cpu_bf16 else torch.float32)
    assert ("reports native bf16" if cpu_bf16 else "no native bf16") in choice.reason
    assert choice.as_dict() == {"precision": choice.name, "requested": "auto", "reason": choice.reason}


def test_an_explicit_precision_is_kept_and_emulated_bf16_is_flagged(cpu_bf16):
    assert choose_precision("fp32", "cpu").dtype == torch.float32
    forced = choose_precision("bf16", "cpu")
    assert forced.bf16 and forced.dtype == torch.bfloat16
    assert ("much slower" in forced.reason) != cpu_bf16
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        choose_precision("fp16", "cpu")


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="AVX2_ONLY limits x86 instruction sets"
)
def test_a_fast_cpu_restricted_to_avx2_decodes_in_fp32():
    """With `AVX2_ONLY` set, any x86 CPU answers as an AVX2-only one: auto gives fp32, bf16 is emulated."""
    import json
    import os
    import subprocess
    import sys

    held = {name: os.environ.get(name) for name in precision.AVX2_ONLY}
    assert held == precision.AVX2_ONLY, f"tests/conftest.py holds the suite's CPU with {held}, not precision.AVX2_ONLY"
    probe = (
        "import json, torch; from runtime.precision import choose_precision; "
        "print(json.dumps(choose_precision('auto', 'cpu').as_dict()))"
    )
    env = {**os.environ, **precision.AVX2_ONLY}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    choice = json.loads(result.stdout.strip().splitlines()[-1])
    assert choice["precision"] == "fp32" and "no native bf16" in choice["reason"]
    # the hardware line says the CPU was held back, so a timing taken this way is not mistaken for the full CPU
    line = hardware_line(
        {
            "name": "CPU X",
            "threads": 2,
            "fp32_gflops": 1.0,
            "bf16_gflops": 1.0,
            "matmul_size": 8,
            "isa_limits": precision.AVX2_ONLY,
        }
    )
    assert line.startswith(
        "CPU X limited by ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2, 2 threads"
    )


def test_the_real_cpu_answer_matches_onednn():
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert choose_precision("auto", "cpu").name == ("bf16" if native else "fp32")


def test_train_config_takes_precision_from_the_hardware(cpu_bf16):
    parser = TrlParser((RecipeArguments, MultiverseSFTConfig, MultiverseModelConfig))
    base = ["--model", "m", "--dataset", "d.jsonl", "--output", "o", "--use_cpu", "true"]
    _, config, _ = parser.parse_args_and_config(base)
    assert config.precision == "auto" and config.bf16 == cpu_bf16
    assert ("reports native bf16" if cpu_bf16 else "no native bf16") in config.precision_reason
    _, config, _ = parser.parse_args_and_config([*base, "--precision", "fp32"])
    assert config.bf16 is False and config.precision_reason.startswith("asked for")
    _, config, _ = parser.parse_args_and_config([*base, "--bf16", "false"])
    assert config.bf16 is False and "--bf16 False" in config.precision_reason
    with pytest.raises(ValueError, match="--precision bf16 contradicts --bf16 False"):
        MultiverseSFTConfig(output_dir="o", use_cpu=True, precision="bf16", bf16=False)
    if not torch.cuda.is_available():  # `multiverse train` without --use_cpu: bf16 on the CPU must not be refused
        _, config, _ = parser.parse_args_and_config(base[:-2])
        assert config.bf16 == cpu_bf16 and config.use_cpu == cpu_bf16


def test_the_probe_measures_both_dtypes_and_names_the_hardware():
    assert matmul_gflops(torch.float32, size=64, seconds=0.01) > 0
    report = hardware_report("cpu", size=64, seconds=0.01)
    assert report["threads"] == torch.get_num_threads() and report["fp32_gflops"] > 0 and report["bf16_gflops"] > 0
    assert report["fp32_gflops_per_core"] > 0 and report["bf16_gflops_per_core"] > 0
    assert report["native_bf16"] == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    line = hardware_line(report)
    assert report["name"] in line and f"{report['threads']} threads" in line and "64x64" in line and "per core" in line
    assert torch.get_num_threads() == report["threads"]  # the per-core probe gave the threads back


def test_eval_and_generate_refuse_an_unknown_precision(capsys):
    from evaluation.cli import parse_args
    from multiverse.generate_cmd import main as generate_main

    assert parse_args(["--model", "m", "--data", "d.jsonl"]).precision == "auto"
    for refuse in (lambda: parse_args(["--model", "m", "--data", "d.jsonl", "--precision", "fp16"]),
                   lambda: generate_main(["--model", "m", "--prompt", "q", "--precision", "fp16"])):
        with pytest.raises(SystemExit) as exit_:
            refuse()
        assert exit_.value.code == 2 and "--precision" in capsys.readouterr().err
