"""Tokens per second and model FLOPs utilisation (MFU) of a training run.

FLOPs per token follow the PaLM appendix / nanoGPT estimate: 6 x (weights used in matrix multiplies) for
forward+backward, plus 12 x layers x (heads x head_dim) x sequence length for the attention scores and weighted
sum. A weight that is not trained (LoRA's base model, a frozen body) costs less: 2 for the forward pass, 2 more
when a gradient flows through it to something trained before it, and never the 2 of its own gradient.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.pytorch_utils import Conv1D

from .ownership import write_json_atomically
from .precision import cpuinfo_value

logger = logging.getLogger(__name__)

# Dense peak FLOP/s per device from vendor data sheets (no sparsity). bf16/fp16 on tensor cores; fp32 is the
# TF32 tensor-core figure where the chip has one (PyTorch uses TF32 for fp32 matmuls only when allowed).
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp32": 494e12},
    "H100": {"bf16": 989e12, "fp32": 494e12},
    "A100": {"bf16": 312e12, "fp32": 156e12},
    "L40S": {"bf16": 362e12, "fp32": 183e12},
    "A10G": {"bf16": 70e12, "fp32": 35e12},
    "L4": {"bf16": 121e12, "fp32": 60e12},
    "RTX 4090": {"bf16": 165e12, "fp32": 83e12},
    "V100": {"bf16": 125e12, "fp32": 15.7e12},
    "T4": {"bf16": 65e12, "fp32": 8.1e12},
}


def matmul_weight_count(model) -> int:
    """Weights that take part in matrix multiplies: Linear/Conv1D layers, the LM head even when tied.

    Embedding lookups (token, position) cost no matmul FLOPs and are left out.
    """
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))


def flops_per_token(matmul_weights: int, num_layers: int, hidden_size: int, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token: 6 N + 12 L H T."""
    return 6.0 * matmul_weights + 12.0 * num_layers * hidden_size * seq_len


def _layers_and_attention_width(config) -> tuple[int, int]:
    """(layers, heads x head_dim): the width of the attention's scores and weighted sum, which is the hidden size
    unless the config sets its own head_dim (Gemma, Qwen3)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    head_dim = getattr(config, "head_dim", None)
    return layers, heads * head_dim if heads and head_dim else hidden


def _is_attention(module) -> bool:
    """An attention block of a transformers model (LlamaAttention, BertSelfAttention, GPT2Attention, ...): the
    innermost module whose class name ends in Attention."""
    return type(module).__name__.endswith("Attention") and \
        not any(type(child).__name__.endswith("Attention") for child in module.children())


def _trained_flops(model, seq_len: int) -> float:
    """Training FLOPs per token of the matrix multiplies and the attention, going through the modules in
    registration order, which stands for the forward order (embeddings, layers, head): a weight or an attention
    block that nothing trained comes before costs its forward pass only (2 per weight, 4 x width x seq_len), one
    that a gradient flows through 2 per weight more and twice the attention's forward, a trained weight 6."""
    layers, width = _layers_and_attention_width(model.config)
    flops, trained_before, blocks = 0.0, False, 0
    # peft's modules_to_save keep a frozen original beside the trained copy that runs: the original does not run
    running = [module for name, module in model.named_modules() if "original_module" not in name.split(".")]
    for module in running:
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            flops += module.weight.numel() * (6 if module.weight.requires_grad else 4 if trained_before else 2)
        elif _is_attention(module):
            inside = any(p.requires_grad for p in module.parameters())  # LoRA on the query projection
            flops += (12.0 if trained_before or inside else 4.0) * width * seq_len
            blocks += 1
        trained_before = trained_before or any(p.requires_grad for p in module.parameters(recurse=False))
    if blocks != layers:  # attention blocks not recognised: every layer's attention, forward and backward
        flops = sum(module.weight.numel() * (6 if module.weight.requires_grad else 4) for module in running
                    if isinstance(module, (torch.nn.Linear, Conv1D))) + 12.0 * layers * width * seq_len
    return flops


def model_flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token (module docstring). A model made of several transformers, whose layers do not all
    run on every token (ELECTRA's discriminator and generator: `generator` attribute, `matmul_weights_per_token`),
    trains all its weights and counts the attention of each."""
    if not hasattr(model, "matmul_weights_per_token"):
        return _trained_flops(model, seq_len)
    configs = [model.config] + [sub.config for sub in (getattr(model, "generator", None),) if sub is not None]
    return 6.0 * model.matmul_weights_per_token() + sum(
        12.0 * layers * width * seq_len for layers, width in map(_layers_and_attention_width, configs))


def table_peak_flops(device_name: str, dtype_name: str) -> float | None:
    """Data-sheet dense peak for a device name such as 'NVIDIA H200' ('bf16' or 'fp32'); None when not listed."""
    for key, peaks in PEAK_FLOPS.items():
        if key in device_name:
            return peaks.get(dtype_name)
    return None


def peak_flops_per_device(device: torch.device, dtype_name: str) -> tuple[float | None, str]:
    """(peak FLOP/s, where the number comes from). GPUs from the table; CPUs by a short measured matmul."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = table_peak_flops(name, dtype_name)
        return peak, f"{name} data sheet ({dtype_name})" if peak else f"unknown accelerator {name!r}"
    if device.type == "cpu":
        return cpu_peak_flops(dtype_name)
    return None, f"unknown device type {device.type!r}"


def cpu_model_name() -> str:
    return cpuinfo_value("model name") or platform.processor() or platform.machine()


def cpu_peak_flops(dtype_name: str, cache_file: Path | None = None) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from) of this CPU at the current thread count: the best of several timed
    matmuls, measured once per CPU model, thread count, dtype and torch version and kept in a cache file
    ($LMRECIPES_CACHE or ~/.cache/lmrecipes, cpu-peak-flops.json), so that a run started while the machine is busy
    does not measure a low peak (and report a high MFU) and runs on one machine share one basis."""
    threads = torch.get_num_threads()
    key = f"{cpu_model_name()} | {threads} threads | {dtype_name} | torch {torch.__version__}"
    cache_file = cache_file or Path(os.environ.get("LMRECIPES_CACHE") or Path.home() / ".cache" / "lmrecipes") \
        / "cpu-peak-flops.json"
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    if isinstance(known.get(key), (int, float)) and known[key] > 0:
        return float(known[key]), f"CPU matmul peak measured earlier on this machine ({key})"
    peak = max(measure_cpu_matmul_flops(torch.bfloat16 if dtype_name == "bf16" else torch.float32)
               for _ in range(5))
    if os.environ.get("LOCAL_RANK", "0") != "0":  # processes sharing the cores measured each other: not kept
        return peak, f"CPU matmul peak, best of 5, measured now alongside other processes ({key})"
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(cache_file, {**known, key: peak})
    except OSError:  # a read-only home: measured again next time
        pass
    return peak, f"CPU matmul peak, best of 5, measured now ({key})"


def measure_cpu_matmul_flops(dtype=torch.float32, size: int = 1024, seconds: float = 0.3) -> float:
    """Achieved FLOP/s of a square matmul on this CPU with the current thread count: a practical peak."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        count += 1
    return 2.0 * size**3 * count / (time.perf_counter() - start)


def describe_hardware(device: torch.device, world_size: int) -> str:
    """What the run trained on, for results and model cards: e.g. '2 x NVIDIA H200' or
    '1 x CPU AMD EPYC (2 threads)'."""
    if device.type == "cuda":
        return f"{world_size} x {torch.cuda.get_device_name(device)}"
    return f"{world_size} x {device.type.upper()} {cpu_model_name()} ({torch.get_num_threads()} threads)".replace(
        "CPU CPU", "CPU")


class ThroughputCallback(TrainerCallback):
    """Measures training tokens/s over the whole training loop, data loading included, but not evaluations and
    checkpoint saves; and MFU.

    The clock runs from the start of training to the end of each optimizer step and restarts after each
    evaluation and save: the Trainer fetches a step's batches before `on_step_begin`, so timing from step begin to
    step end would leave the data loader out (a streaming run reported 18.6k tokens/s where its loop ran at 5.6k).
    Tokens come from the Trainer's own count (`include_num_input_tokens_seen`), gathered over processes.
    """

    def __init__(self, flops_per_token: float, peak_flops: float | None, world_size: int, hardware: str = ""):
        self.flops_per_token, self.peak_flops, self.world_size = flops_per_token, peak_flops, world_size
        self.hardware = hardware
        self.step_seconds, self.tokens_at_start, self._mark = 0.0, 0, None
        self.metrics: dict[str, float | None] = {}
        self._warned, self._resumed = False, False

    def on_train_begin(self, args, state, control, **kwargs):
        self.tokens_at_start = state.num_input_tokens_seen
        # a resumed run's first fetch re-reads the batches it skips (a stream from its start): the clock starts
        # after that step instead
        self._resumed = state.global_step > 0
        self._mark = None if self._resumed else time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._mark is not None:
            self.step_seconds += now - self._mark
        elif self._resumed:
            self.tokens_at_start = state.num_input_tokens_seen
        self._mark = now

    def _restart_clock(self):  # what ran since the last step (evaluation, save) is not training time
        if self._mark is not None:
            self._mark = time.perf_counter()

    def on_evaluate(self, args, state, control, **kwargs):
        self._restart_clock()

    def on_save(self, args, state, control, **kwargs):
        self._restart_clock()

    def _update(self, state):
        tokens = state.num_input_tokens_seen - self.tokens_at_start
        if self.step_seconds <= 0 or tokens <= 0:
            return
        total = tokens / self.step_seconds
        per_device = total / self.world_size
        mfu = per_device * self.flops_per_token / self.peak_flops if self.peak_flops else None
        if mfu is not None and mfu > 1.0:  # the peak is what this device was measured to do: it cannot be beaten
            if not self._warned:
                logger.warning("MFU computed as %.0f%%: the peak basis (%.3g FLOP/s) is below what training achieved; "
                               "reporting 100%%", 100 * mfu, self.peak_flops)
                self._warned = True
            mfu = 1.0
        self.metrics = {"train_tokens_per_second": total, "train_tokens_per_second_per_device": per_device,
                        "mfu": mfu, "train_tokens": state.num_input_tokens_seen, "hardware": self.hardware}

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._update(state)
        if self.metrics and state.is_world_process_zero and logs and "loss" in logs:
            mfu = self.metrics["mfu"]
            logger.info("step %d: %.0f tokens/s (%.0f per device), MFU %s", state.global_step,
                        self.metrics["train_tokens_per_second"], self.metrics["train_tokens_per_second_per_device"],
                        f"{100 * mfu:.1f}%" if mfu is not None else "unknown")

    def on_train_end(self, args, state, control, **kwargs):
        self._update(state)
