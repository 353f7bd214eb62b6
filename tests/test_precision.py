"""bf16: auto: the flag reader on made-up CPUs, the choice logged, and a tiny run in bf16 on the CPU that trains."""

import json
import os

import pytest

import lmrecipes
from conftest import LLAMA_PRETRAIN, REPO, TINY_LLAMA
from lmrecipes.precision import bf16_choice, cpu_bf16_choice, cpu_flags

ZEN4 = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "amx_bf16", "amx_tile", "amx_int8"}
AVX2_ONLY = {"avx", "avx2", "fma", "f16c"}
ICELAKE = {"avx2", "avx512f", "avx512_vnni", "avx512bw"}  # AVX-512 without bf16


@pytest.mark.parametrize("flags, native", [(ZEN4, True), (SAPPHIRE_RAPIDS, True), (AVX2_ONLY, False),
                                           (ICELAKE, False), (set(), False)])
def test_the_cpu_flag_reader(flags, native):
    on, why = cpu_bf16_choice(flags)
    assert on is native and (("natively" in why) if native else ("no native bf16" in why)), why


def test_auto_follows_a_onednn_instruction_set_limit(monkeypatch):
    """A bf16 CPU told to run as an AVX2 one (ONEDNN_MAX_CPU_ISA=AVX2: oneDNN's bf16 is then emulated) gets fp32."""
    from lmrecipes import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda path="/proc/cpuinfo": ZEN4)
    monkeypatch.setattr(precision, "onednn_bf16", lambda: False)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    assert bf16_choice("auto", on_cpu=True)[0] is True  # no limit set: the flags decide
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert bf16_choice("auto", on_cpu=True) == (
        False, "ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN from the CPU's bf16: fp32 is faster")
    monkeypatch.setattr(precision, "onednn_bf16", lambda: True)  # a limit that keeps bf16 (AVX512_CORE_BF16)
    assert bf16_choice("auto", on_cpu=True)[0] is True
    monkeypatch.setattr(precision, "cpu_flags", lambda path="/proc/cpuinfo": AVX2_ONLY)  # no bf16 to keep
    assert bf16_choice("auto", on_cpu=True)[0] is False


def test_onednn_has_no_bf16_under_an_avx2_limit():
    """The check behind it, on this machine's real oneDNN (torch reads the limit once: a fresh process)."""
    import subprocess
    import sys

    code = ("import importlib.util as u; s = u.spec_from_file_location('p', 'src/lmrecipes/precision.py'); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); print(m.onednn_bf16())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_an_explicit_setting_always_wins():
    assert bf16_choice("true", on_cpu=True) == (True, "bf16: true in the recipe")
    assert bf16_choice("false", on_cpu=True) == (False, "bf16: false in the recipe")


def test_a_tiny_bf16_run_on_the_cpu_trains_and_says_why(tmp_path, small_corpus, capsys):
    """bf16 without use_cpu on a machine without a GPU (transformers alone stops: "Your setup doesn't support
    bf16/gpu"): autocast on the CPU, and the loss falls. auto names its choice and reason."""
    results = lmrecipes.pretrain(LLAMA_PRETRAIN, **{**TINY_LLAMA, "bf16": "true"}, train_file=[small_corpus],
                                 validation_fraction=0.15, max_steps=30, output_dir=str(tmp_path / "bf16"))
    log = capsys.readouterr().out
    assert "Precision: bf16 autocast (bf16: true in the recipe)" in log
    losses = [entry["loss"] for entry in json.loads((tmp_path / "bf16" / "trainer_state.json").read_text())[
        "log_history"] if "loss" in entry]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    assert results["eval_loss"] < losses[0]
    lmrecipes.pretrain(LLAMA_PRETRAIN, **{**TINY_LLAMA, "bf16": "auto"}, train_file=[small_corpus],
                       validation_fraction=0.15, max_steps=1, output_dir=str(tmp_path / "auto"))
    expected = "bf16 autocast (the CPU computes bf16 natively" if cpu_bf16_choice(cpu_flags())[0] \
        else "fp32 (the CPU has no native"
    assert f"Precision: {expected}" in capsys.readouterr().out


@pytest.mark.parametrize("flags, expected", [(["--bf16"], True), (["--bf16", "y"], True), (["--bf16", "off"], False),
                                             (["--bf16", "auto", "--fp16", "true"], False)])
def test_bf16_flag_spellings(flags, expected):
    from lmrecipes.arguments import PRETRAIN_ARGUMENTS
    from lmrecipes.recipe import parse_recipe

    *args, _ = parse_recipe(PRETRAIN_ARGUMENTS, [LLAMA_PRETRAIN, *flags, "--use_cpu", "true"])
    training_args = next(a for a in args if hasattr(a, "precision_choice"))
    assert training_args.bf16 is expected
