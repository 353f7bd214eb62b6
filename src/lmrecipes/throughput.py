"""Tokens per second and model FLOPs utilisation (MFU) of a training run.

FLOPs per token follow the PaLM appendix / nanoGPT estimate: 6 x (weights used in matrix multiplies) for
forward+backward, plus 12 x layers x (heads x head_dim) x sequence length for the attention scores and weighted
sum. A weight that is not trained (LoRA's base model, a frozen body) costs less: 2 for the forward pass, 2 more
when a gradient flows through it to something trained before it, and never the 2 of its own gradient.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.pytorch_utils import Conv1D

from .peak_flops import cpu_peak_flops, describe_hardware, peak_flops_per_device, tf32_allowed

logger = logging.getLogger(__name__)

def parameter_size(param) -> int:
    """Values in a parameter, whole: under DeepSpeed ZeRO-3 (`zero.Init`) a parameter holds none of them
    (`numel()` is 0) and DeepSpeed keeps the size in `ds_numel`."""
    return getattr(param, "ds_numel", None) or param.numel()


def matmul_weight_count(model) -> int:
    """Weights that take part in matrix multiplies: Linear/Conv1D layers, the LM head even when tied.

    Embedding lookups (token, position) cost no matmul FLOPs and are left out.
    """
    return sum(parameter_size(m.weight) for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))


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
            flops += parameter_size(module.weight) * (6 if module.weight.requires_grad else 4 if trained_before else 2)
        elif _is_attention(module):
            inside = any(p.requires_grad for p in module.parameters())  # LoRA on the query projection
            flops += (12.0 if trained_before or inside else 4.0) * width * seq_len
            blocks += 1
        trained_before = trained_before or any(p.requires_grad for p in module.parameters(recurse=False))
    if blocks != layers:  # attention blocks not recognised: every layer's attention, forward and backward
        flops = sum(parameter_size(module.weight) * (6 if module.weight.requires_grad else 4) for module in running
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


def synchronize(device) -> None:
    """Wait until the accelerator has run what was queued: a timing window ends when the work in it is done."""
    if device is not None and device.type not in ("cpu", "meta") and torch.accelerator.is_available():
        torch.accelerator.synchronize(device)


# The op names behind each attention kernel, as torch's profiler records them (SDPA picks one at run time).
ATTENTION_OPS = (("flash_attn::", "flash-attn"), ("_flash_attention_for_cpu", "SDPA flash (CPU)"),
                 ("_scaled_dot_product_flash_attention", "SDPA flash"),
                 ("_scaled_dot_product_cudnn_attention", "SDPA cuDNN"),
                 ("_scaled_dot_product_efficient_attention", "SDPA memory-efficient"),
                 ("_scaled_dot_product_attention_math", "SDPA math (unfused)"), ("flex_attention", "flex attention"))


def attention_kernels(op_names) -> str:
    """The attention kernels that ran, from the op names of a profiled step: 'SDPA flash', ..., 'eager (matmul +
    softmax)' when no fused kernel ran."""
    names = set(op_names)
    found = {next((kernel for needle, kernel in ATTENTION_OPS if needle in name), None) for name in names} - {None}
    if found:
        return " + ".join(kernel for _, kernel in ATTENTION_OPS if kernel in found)
    return "eager (matmul + softmax)" if any("softmax" in name for name in names) else "none seen"


@contextlib.contextmanager
def _quiet_stderr():
    """The profiler's C++ side prints a line as it starts and stops (`USDT: ... profiler_start`): not the user's."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def peak_memory(device) -> tuple[float, str]:
    """(GB, what it is): torch's peak allocation on an accelerator, the process's peak resident memory on a CPU."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9, "peak memory allocated by torch on the GPU"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "peak resident memory of the process"


class ThroughputCallback(TrainerCallback):
    """Training tokens/s and MFU you can quote: steady state apart from warm-up, in timing windows bounded by device
    synchronisation, with the data loader inside the clock and evaluations and saves outside it.

    - Warm-up: the first `warmup_steps` optimizer steps of a session (compilation, allocator and data-loader start,
      a resumed run's skip through the batches it trained on) are timed apart (`first_step_seconds`,
      `warmup_seconds`).
    - Steady state: the later steps in windows of `window` steps. A window ends on a device synchronisation (the
      host queues work ahead of the GPU: without one a window would time the queueing); the steps before an
      evaluation or a save synchronise too, so that their work is not counted as the evaluation's. tokens/s is the
      median over complete windows, with p10 and p90; a run too short for one window reports its whole loop.
    - Data: the time from a step's end to the next step's start is the Trainer fetching the next batches
      (`data_wait_fraction`; on an accelerator an upper bound, as the fetch overlaps queued work).
    - Tokens: with `tokens_per_row` (every row the same length: packed pretraining blocks) counted on the host from
      the step number and the data loader (rows per micro-batch, rows per epoch: one process feeds an epoch's last
      batch short, several fill it from the start, accelerate's `even_batches`), with no device sync per
      micro-batch; else the Trainer's own count (`include_num_input_tokens_seen`, a gather per micro-batch).
    - The attention kernels that ran, read from one profiled warm-up step.
    - MFU: against the peak basis; training never beats it, so an MFU of 100% or more says the basis is wrong (a CPU
      peak measured while the cores were busy). The peak is measured again once (`remeasure_peak`, which replaces
      a cached CPU peak); if training still beats it, MFU is not trusted: reported as unknown (`mfu` null,
      `mfu_trusted` false), never as 100%.
    """

    def __init__(self, flops_per_token: float, peak_flops: float | None, world_size: int, hardware: str = "",
                 tokens_per_row: int | None = None, rows_per_batch: int = 1, accumulation: int = 1, device=None,
                 peak_source: str = "", max_steps: int = 0, remeasure_peak=None):
        self.flops_per_token, self.peak_flops, self.world_size = flops_per_token, peak_flops, world_size
        self.hardware, self.device, self.peak_source = hardware, device, peak_source
        self.remeasure_peak = remeasure_peak  # () -> (peak, source), or None: a basis that cannot be measured again
        self.mfu_trusted: bool | None = None if peak_flops is None else True
        self.tokens_per_row, self.rows_per_batch, self.accumulation = tokens_per_row, rows_per_batch, accumulation
        self.batches_per_epoch = self.rows_per_epoch = None  # per process, from the data loader; None for a stream
        self.window = max(1, min(20, max_steps // 10))
        self.warmup_steps = max(2, self.window)
        self.metrics: dict[str, float | str | None] = {}
        self.attention = "not profiled"
        self._profiler = None
        self._reset()

    def _reset(self):
        self.steps = 0  # optimizer steps in this session
        self.first_step_seconds = self.warmup_seconds = self.train_seconds = self.data_seconds = 0.0
        self.windows: list[tuple[float, float]] = []  # (tokens, seconds) of each complete window
        self._window_steps, self._window_seconds, self._window_tokens_from = 0, 0.0, 0
        self._tokens_from, self._mark = 0, None

    def tokens(self, state) -> int:
        """Tokens trained on by the end of `state.global_step`, over all processes."""
        if not self.tokens_per_row:
            return state.num_input_tokens_seen
        steps, batches, rows = state.global_step, self.batches_per_epoch, self.rows_per_epoch
        if not batches:
            return steps * self.accumulation * self.rows_per_batch * self.tokens_per_row * self.world_size
        steps_per_epoch = math.ceil(batches / self.accumulation)  # an epoch's last step takes what is left
        epochs, into_epoch = divmod(steps, steps_per_epoch)
        rows_now = min(into_epoch * self.accumulation * self.rows_per_batch, rows)
        return (epochs * rows + rows_now) * self.tokens_per_row * self.world_size

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if state.max_steps > 0:  # known now also for epoch-based runs
            self.window = max(1, min(20, state.max_steps // 10))
            self.warmup_steps = max(2, self.window)
        try:
            self.batches_per_epoch = len(train_dataloader)
            whole = self.rows_per_batch * self.batches_per_epoch
            self.rows_per_epoch = whole if self.world_size > 1 or getattr(args, "dataloader_drop_last", False) \
                else min(whole, len(train_dataloader.dataset))
        except (TypeError, AttributeError):  # a stream (no length): every step full
            self.batches_per_epoch = self.rows_per_epoch = None
        self._reset()
        self._tokens_from = self._window_tokens_from = self.tokens(state)
        self._mark = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        if self._mark is not None:
            self.data_seconds += time.perf_counter() - self._mark
        if self.steps == self.warmup_steps - 1 and self._profiler is None and self.attention == "not profiled":
            self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            with _quiet_stderr():
                self._profiler.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        in_steady_state = self.steps > self.warmup_steps
        window_ends = in_steady_state and self._window_steps + 1 == self.window
        if window_ends or control.should_evaluate or control.should_save or self.steps == self.warmup_steps:
            synchronize(self.device)
        now = time.perf_counter()
        seconds, self._mark = now - self._mark, now
        self.train_seconds += seconds
        if self._profiler is not None:
            with _quiet_stderr():
                self._profiler.__exit__(None, None, None)
            self.attention = attention_kernels(event.name for event in self._profiler.events())
            self._profiler = None
        if not in_steady_state:
            self.warmup_seconds += seconds
            self.first_step_seconds = self.first_step_seconds or seconds
            self._window_tokens_from = self.tokens(state)
            return
        self._window_steps, self._window_seconds = self._window_steps + 1, self._window_seconds + seconds
        if window_ends:
            tokens = self.tokens(state)
            self.windows.append((tokens - self._window_tokens_from, self._window_seconds))
            self._window_steps, self._window_seconds, self._window_tokens_from = 0, 0.0, tokens

    def _restart_clock(self):  # what ran since the last step (evaluation, save) is not training time
        if self._mark is not None:
            self._mark = time.perf_counter()

    def on_evaluate(self, args, state, control, **kwargs):
        self._restart_clock()

    def on_save(self, args, state, control, **kwargs):
        self._restart_clock()

    def _mfu(self, per_device: float) -> float | None:
        """MFU against the peak basis; None when there is none or it proved wrong (training reached it)."""
        if not self.peak_flops or not self.mfu_trusted:
            return None
        mfu = per_device * self.flops_per_token / self.peak_flops
        if mfu >= 1.0 and self.remeasure_peak is not None:  # the basis was measured low: once more
            remeasure, self.remeasure_peak, before = self.remeasure_peak, None, self.peak_flops
            self.peak_flops, self.peak_source = remeasure()
            self._restart_clock()  # the measurement is not training time
            logger.warning("MFU computed as %.0f%% of the peak basis (%.3g FLOP/s): the peak measured again is "
                           "%.3g FLOP/s (%s)", 100 * mfu, before, self.peak_flops, self.peak_source)
            mfu = per_device * self.flops_per_token / self.peak_flops
        if mfu >= 1.0:  # a peak is what the device can do: reaching it means the basis is wrong, not the run fast
            self.mfu_trusted = False
            logger.warning("MFU computed as %.0f%%: the peak basis (%.3g FLOP/s, %s) is below what training "
                           "achieved; MFU is not reported (unknown)", 100 * mfu, self.peak_flops, self.peak_source)
            return None
        return mfu

    def _update(self, state):
        tokens = self.tokens(state) - self._tokens_from
        if self.train_seconds <= 0 or tokens <= 0:
            return
        whole_loop = tokens / self.train_seconds
        rates = [count / seconds for count, seconds in self.windows if seconds > 0]
        total = float(np.median(rates)) if rates else whole_loop
        per_device = total / self.world_size
        memory, memory_kind = peak_memory(self.device)
        mfu = self._mfu(per_device)  # first: it may measure the peak again
        self.metrics = {
            "train_tokens_per_second": total, "train_tokens_per_second_per_device": per_device,
            "train_tokens_per_second_p10": float(np.percentile(rates, 10)) if rates else None,
            "train_tokens_per_second_p90": float(np.percentile(rates, 90)) if rates else None,
            "train_tokens_per_second_whole_loop": whole_loop, "throughput_steady_state": bool(rates),
            "throughput_windows": len(rates), "throughput_window_steps": self.window,
            "warmup_steps": min(self.steps, self.warmup_steps), "warmup_seconds": self.warmup_seconds,
            "first_step_seconds": self.first_step_seconds,
            "data_wait_fraction": min(1.0, self.data_seconds / self.train_seconds),
            "mfu": mfu, "mfu_trusted": self.mfu_trusted, "mfu_flops_per_token": self.flops_per_token,
            "mfu_peak_flops_per_device": self.peak_flops, "mfu_peak_source": self.peak_source,
            "peak_memory_gb": memory, "peak_memory_kind": memory_kind, "attention_kernel": self.attention,
            "tf32": tf32_allowed(), "train_tokens": self.tokens(state), "hardware": self.hardware}

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._update(state)
        if self.metrics and state.is_world_process_zero and logs and "loss" in logs:
            mfu = self.metrics["mfu"]
            logger.info("step %d: %.0f tokens/s (%.0f per device; %s), MFU %s", state.global_step,
                        self.metrics["train_tokens_per_second"], self.metrics["train_tokens_per_second_per_device"],
                        f"median of {len(self.windows)} windows" if self.windows else "warm-up included",
                        f"{100 * mfu:.1f}%" if mfu is not None else
                        "not trusted (training beat its peak basis)" if self.mfu_trusted is False else "unknown")

    def on_train_end(self, args, state, control, **kwargs):
        if self._profiler is not None:  # the run ended inside the profiled step
            with _quiet_stderr():
                self._profiler.__exit__(None, None, None)
            self._profiler = None
        self._update(state)


def throughput_callback(model, training_args, seq_len: int, packed: bool) -> ThroughputCallback:
    """The callback that reports tokens/s and MFU; logs the precision, the MFU basis and the CPU threads."""
    dtype = "bf16" if (training_args.bf16 or training_args.fp16) else "fp32"
    logger.info("Precision: %s (%s)", "fp16 autocast" if training_args.fp16 else
                "bf16 autocast" if training_args.bf16 else "fp32",
                getattr(training_args, "precision_choice", "TrainingArguments"))
    peak, source = peak_flops_per_device(training_args.device, dtype)
    # a CPU's measured peak can be measured again (a data sheet's cannot), by one process of a machine: several
    # measuring at once would measure each other
    remeasure = (lambda: cpu_peak_flops(dtype, remeasure=True)) \
        if training_args.device.type == "cpu" and training_args.local_process_index == 0 else None
    per_token = model_flops_per_token(model, seq_len)
    logger.info("MFU basis: %.3g FLOPs/token, peak %s per device (%s)", per_token,
                f"{peak:.3g} FLOP/s" if peak else "unknown", source)
    if training_args.device.type == "cpu":  # accelerate launch sets OMP_NUM_THREADS=1 unless told otherwise
        logger.info("CPU threads per process: %d of %d CPUs (--num_cpu_threads_per_process for accelerate launch)",
                    torch.get_num_threads(), os.cpu_count())
    return ThroughputCallback(per_token, peak, training_args.world_size,
                              describe_hardware(training_args.device, training_args.world_size),
                              tokens_per_row=seq_len if packed else None,
                              rows_per_batch=training_args.per_device_train_batch_size,
                              accumulation=training_args.gradient_accumulation_steps,
                              device=training_args.device, peak_source=source, max_steps=training_args.max_steps,
                              remeasure_peak=remeasure)
