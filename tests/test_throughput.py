"""FLOPs per token and MFU arithmetic against hand-computed values (timings themselves are never asserted)."""

import pytest
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, TrainerState, TrainingArguments

from lmrecipes.peak_flops import table_peak_flops
from lmrecipes.throughput import ThroughputCallback, model_flops_per_token


def test_flops_per_token_of_a_llama_by_hand():
    # hidden 64, MLP 256, 2 layers, vocabulary 1000, untied head, sequence 128
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, vocab_size=1000,
                                         tie_word_embeddings=False))
    per_layer = 4 * 64 * 64 + 3 * 64 * 256          # q, k, v, o + gate, up, down = 65,536
    matmul_weights = 2 * per_layer + 64 * 1000      # + LM head = 195,072 (the input embedding is a lookup)
    attention = 12 * 2 * 64 * 128                   # 12 L H T = 196,608
    assert model_flops_per_token(model, 128) == 6 * matmul_weights + attention == 1_367_040


def test_flops_per_token_of_a_gpt2_with_tied_head_by_hand():
    # GPT-2 uses Conv1D layers; the tied head is still a matmul per token; position embeddings are a lookup
    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=128))
    per_layer = 64 * 192 + 64 * 64 + 64 * 256 + 256 * 64  # c_attn, attn c_proj, c_fc, mlp c_proj = 49,152
    matmul_weights = 2 * per_layer + 64 * 1000             # 162,304
    assert model_flops_per_token(model, 128) == 6 * matmul_weights + 12 * 2 * 64 * 128 == 1_170_432


def counted_flops_per_token(model, seq_len: int, labels) -> float:
    """Training FLOPs per token as torch counts them (FlopCounterMode over a forward and backward pass)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(1, 500, (2, seq_len))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=labels(ids)).loss.backward()
    return counter.get_total_flops() / (2 * seq_len)


def test_flops_per_token_against_torchs_count_for_full_lora_and_frozen_training():
    """6 FLOPs per trained weight, 4 per frozen one a gradient flows through (LoRA's base model), 2 per frozen one
    before anything trains (a frozen body under a trained head); attention of heads x head_dim (a config's own
    head_dim). Eager attention: torch does not count the CPU's fused attention kernel."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    sizes = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, pad_token_id=0, attn_implementation="eager")

    def as_counted(model, labels):
        return model_flops_per_token(model, 64) / counted_flops_per_token(model, 64, labels)

    def next_tokens(ids):
        return ids

    def classes(ids):
        return torch.zeros(len(ids), dtype=torch.long)

    assert as_counted(LlamaForCausalLM(LlamaConfig(**sizes)), next_tokens) == 1.0
    assert as_counted(LlamaForCausalLM(LlamaConfig(**sizes, head_dim=32)), next_tokens) == 1.0
    lora = get_peft_model(LlamaForSequenceClassification(LlamaConfig(**sizes, num_labels=2)), LoraConfig(
        task_type="SEQ_CLS", r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                  "down_proj"]))
    assert 1.0 <= as_counted(lora, classes) < 1.05  # the first layer's k and v need no input gradient: counted 4
    frozen = LlamaForSequenceClassification(LlamaConfig(**sizes, num_labels=2))
    for name, parameter in frozen.named_parameters():
        parameter.requires_grad = name.startswith("score")
    assert 1.0 <= as_counted(frozen, classes) < 1.01


def test_mfu_and_tokens_per_second_arithmetic(tmp_path):
    # 2 processes, 8,000 tokens over both in 2 s of step time: 4,000 tokens/s, 2,000 per device;
    # 1e6 FLOPs/token at a 1e10 FLOP/s peak per device -> MFU 0.2
    callback = ThroughputCallback(flops_per_token=1e6, peak_flops=1e10, world_size=2, hardware="2 x test")
    args, state = TrainingArguments(output_dir=str(tmp_path), report_to="none"), TrainerState()
    state.num_input_tokens_seen = 0
    callback.on_train_begin(args, state, None)
    callback.train_seconds = 2.0
    state.num_input_tokens_seen = 8000
    callback.on_train_end(args, state, None)
    assert callback.metrics["train_tokens_per_second"] == pytest.approx(4000)
    assert callback.metrics["train_tokens_per_second_per_device"] == pytest.approx(2000)
    assert callback.metrics["mfu"] == pytest.approx(0.2)
    assert callback.metrics["hardware"] == "2 x test"
    assert callback.metrics["mfu_flops_per_token"] == 1e6 and callback.metrics["mfu_peak_flops_per_device"] == 1e10
    assert callback.metrics["throughput_steady_state"] is False  # no complete window: the whole loop, said so

    # steady state: the median of the windows (warm-up apart), with p10 and p90; MFU from the median
    callback.windows = [(4000.0, 1.0), (8000.0, 1.0), (6000.0, 1.0), (5000.0, 1.0), (7000.0, 1.0)]
    callback.on_train_end(args, state, None)
    assert callback.metrics["train_tokens_per_second"] == pytest.approx(6000)
    assert callback.metrics["train_tokens_per_second_p10"] == pytest.approx(4400)
    assert callback.metrics["train_tokens_per_second_p90"] == pytest.approx(7600)
    assert callback.metrics["train_tokens_per_second_whole_loop"] == pytest.approx(4000)
    assert callback.metrics["mfu"] == pytest.approx(3000 * 1e6 / 1e10)

    unknown = ThroughputCallback(flops_per_token=1e6, peak_flops=None, world_size=1)
    unknown.on_train_begin(args, TrainerState(), None)
    unknown.train_seconds, state.num_input_tokens_seen = 1.0, 100
    unknown.on_train_end(args, state, None)
    assert unknown.metrics["mfu"] is None  # stated as unknown, never guessed


def test_tokens_of_packed_blocks_are_counted_on_the_host_from_the_step():
    """10-token rows, 5 rows a micro-batch, 2 micro-batches a step; 23 rows: 5 micro-batches an epoch, so an epoch
    is 3 steps, its last of one micro-batch. One process feeds the epoch's last micro-batch short (3 rows); two
    fill it from the start of the data (accelerate's even_batches). No device sync per micro-batch (the Trainer's
    count gathers one)."""
    from types import SimpleNamespace

    loader = type("Loader", (), {"dataset": list(range(23)), "__len__": lambda self: 5})()
    alone = ThroughputCallback(flops_per_token=1.0, peak_flops=None, world_size=1, tokens_per_row=10,
                               rows_per_batch=5, accumulation=2)
    alone.on_train_begin(SimpleNamespace(), TrainerState(), None, train_dataloader=loader)
    expected = {0: 0, 1: 100, 2: 200, 3: 230, 4: 330, 6: 460, 7: 560}
    assert {step: alone.tokens(TrainerState(global_step=step)) for step in expected} == expected
    two = ThroughputCallback(flops_per_token=1.0, peak_flops=None, world_size=2, tokens_per_row=10,
                             rows_per_batch=5, accumulation=2)
    two.on_train_begin(SimpleNamespace(), TrainerState(), None, train_dataloader=loader)
    assert two.tokens(TrainerState(global_step=3)) == 2 * 250 and two.tokens(TrainerState(global_step=4)) == 2 * 350
    stream = ThroughputCallback(flops_per_token=1.0, peak_flops=None, world_size=1, tokens_per_row=10,
                                rows_per_batch=5, accumulation=2)
    stream.on_train_begin(SimpleNamespace(), TrainerState(), None, train_dataloader=iter(()))  # no length
    assert stream.tokens(TrainerState(global_step=7)) == 700


def test_the_host_count_of_packed_tokens_is_the_trainers_count(tmp_path):
    """A real Trainer over 23 rows of 16 tokens, 5 rows a micro-batch, 2 micro-batches a step, 7 steps (epochs end
    short): the host count equals the Trainer's own count of every token it fed."""
    import torch
    from transformers import Trainer

    rows = [{"input_ids": torch.arange(16) % 50, "labels": torch.arange(16) % 50} for _ in range(23)]
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=50))
    callback = ThroughputCallback(flops_per_token=1.0, peak_flops=None, world_size=1, tokens_per_row=16,
                                  rows_per_batch=5, accumulation=2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", max_steps=7, per_device_train_batch_size=5,
                             gradient_accumulation_steps=2, use_cpu=True, include_num_input_tokens_seen="all",
                             save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback])
    trainer.train()
    assert callback.tokens(trainer.state) == trainer.state.num_input_tokens_seen == (23 + 23 + 10) * 16


def test_the_attention_kernel_is_named_from_the_ops_that_ran():
    from lmrecipes.throughput import attention_kernels

    assert attention_kernels(["aten::linear", "aten::_scaled_dot_product_flash_attention_for_cpu"]) == \
        "SDPA flash (CPU)"
    assert attention_kernels(["aten::_scaled_dot_product_flash_attention", "aten::_flash_attention_forward"]) == \
        "SDPA flash"
    assert attention_kernels(["aten::_scaled_dot_product_efficient_attention"]) == "SDPA memory-efficient"
    assert attention_kernels(["flash_attn::_flash_attn_varlen_forward"]) == "flash-attn"
    assert attention_kernels(["aten::bmm", "aten::_softmax"]) == "eager (matmul + softmax)"


@pytest.mark.parametrize("name, bf16, tf32, fp32", [
    ("NVIDIA H100 80GB HBM3", 989.4, 494.7, 67),  # the SXM part's name
    ("NVIDIA H100 PCIe", 756, 378, 51),  # a substring match gave it the SXM figure: MFU 1.3x too low
    ("NVIDIA H100 NVL", 835.5, 417.5, 60),
    ("NVIDIA H200", 989.4, 494.7, 67),
    ("NVIDIA H200 NVL", 835.5, 417.5, 60),
    ("NVIDIA A100-SXM4-80GB", 312, 156, 19.5),
    ("NVIDIA A100-PCIE-40GB", 312, 156, 19.5),
    ("NVIDIA A100 80GB PCIe", 312, 156, 19.5),
    ("NVIDIA L4", 121, 60, 30.3),
    ("NVIDIA L40", 181.05, 90.5, 90.5),  # "L4" in "NVIDIA L40" gave it the L4's figure
    ("NVIDIA L40S", 362.05, 183, 91.6),
    ("NVIDIA A10", 125, 62.5, 31.2),
    ("AMD Instinct MI300X", 1307.4, 653.7, 163.4),
])
def test_peak_flops_by_exact_model_and_tf32_setting(name, bf16, tf32, fp32):
    assert table_peak_flops(name, "bf16")[0] == pytest.approx(bf16 * 1e12)
    assert table_peak_flops(name, "fp16")[0] == pytest.approx(bf16 * 1e12)
    assert table_peak_flops(name, "fp32", tf32=True)[0] == pytest.approx(tf32 * 1e12)
    peak, source = table_peak_flops(name, "fp32", tf32=False)
    assert peak == pytest.approx(fp32 * 1e12) and "fp32 without TF32" in source and "data sheet" in source


def test_an_accelerator_not_in_the_table_has_no_peak_and_tf32_is_read_from_torch():
    import torch

    from lmrecipes.peak_flops import tf32_allowed

    for name in ("NVIDIA GH200 480GB", "NVIDIA A10G", "NVIDIA GeForce RTX 4090", "Some Future Accelerator"):
        peak, source = table_peak_flops(name, "bf16")
        assert peak is None and f"unknown accelerator {name!r}" in source
    assert not tf32_allowed()  # torch's default: fp32 matmuls are not TF32, and the fp32 peak says so
    assert table_peak_flops("NVIDIA H100 PCIe", "fp32")[0] == pytest.approx(51e12)
    torch.backends.cuda.matmul.allow_tf32 = True  # what `tf32: true` in a recipe sets
    try:
        assert tf32_allowed() and table_peak_flops("NVIDIA H100 PCIe", "fp32")[0] == pytest.approx(378e12)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


def test_tokens_per_second_counts_the_time_the_data_loader_takes(tmp_path):
    """The clock covers the whole loop: a dataset that sleeps 40 ms per row (4 rows per step: 160 ms) caps tokens/s
    at 4 x 16 tokens / 0.16 s = 400, and the same run without sleeping is much faster. An evaluation between
    steps is not counted."""
    import time

    import torch
    from transformers import Trainer

    class Blocks(torch.utils.data.Dataset):
        def __init__(self, delay):
            self.delay = delay

        def __len__(self):
            return 64

        def __getitem__(self, index):
            time.sleep(self.delay)
            ids = torch.arange(16) % 50
            return {"input_ids": ids, "labels": ids}

    measured = {}
    for delay in (0.0, 0.04):
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2, vocab_size=50))
        callback = ThroughputCallback(flops_per_token=1e3, peak_flops=1e12, world_size=1)
        args = TrainingArguments(output_dir=str(tmp_path / str(delay)), report_to="none", max_steps=6,
                                 per_device_train_batch_size=4, per_device_eval_batch_size=4, use_cpu=True,
                                 include_num_input_tokens_seen="all", eval_strategy="steps", eval_steps=3,
                                 save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
        started = time.perf_counter()
        Trainer(model=model, args=args, train_dataset=Blocks(delay), eval_dataset=Blocks(delay),
                callbacks=[callback]).train()
        measured[delay] = (callback.metrics["train_tokens_per_second"], callback.train_seconds,
                           time.perf_counter() - started, callback.metrics, callback.data_seconds)
    slow_rate, slow_seconds, slow_wall, slow, _ = measured[0.04]
    assert slow["throughput_windows"] == 4 and slow["warmup_steps"] == 2  # steps 3-6, one step a window
    # the fetch sleeps 6 x 0.16 s, all of it counted as waiting; the fraction's margin leaves room for a slow VM's
    # first (and profiled) step
    assert measured[0.04][4] >= 6 * 0.16 and slow["data_wait_fraction"] > 0.6, measured
    assert measured[0.0][4] < measured[0.04][4] / 4, measured  # without the sleep the wait is small
    assert slow["attention_kernel"] == "SDPA flash (CPU)" and slow["tf32"] is False
    assert slow_rate <= 400 * 1.02, measured  # 6 steps x 64 tokens over at least 6 x 0.16 s
    assert slow_seconds >= 6 * 0.16 and measured[0.0][0] > 2 * slow_rate, measured
    # two evaluations of 64 rows sleep 2 x 2.56 s: outside the clock
    assert slow_wall - slow_seconds >= 2 * 64 * 0.04 * 0.9, measured


def test_a_cpu_peak_is_measured_once_per_machine_and_cached(tmp_path, monkeypatch):
    from lmrecipes import peak_flops
    from lmrecipes.peak_flops import cpu_peak_flops

    monkeypatch.setattr(peak_flops, "other_work", lambda cpus: 0.0)  # the cores to itself (this suite's are shared)
    cache = tmp_path / "peaks.json"
    peak, source = cpu_peak_flops("fp32", cache)
    assert peak > 0 and "best of 5, measured now" in source and cache.is_file()
    again, source = cpu_peak_flops("fp32", cache)
    assert again == peak and "measured earlier on this machine" in source


def test_a_busy_machine_is_told_by_its_load_beyond_the_cpus_the_measurement_leaves_free(monkeypatch):
    from lmrecipes import peak_flops

    monkeypatch.setattr(peak_flops, "usable_cpus", lambda: set(range(8)))
    for threads, work, busy in ((8, 0.4, False), (8, 1.0, True), (2, 6.4, False), (2, 6.6, True), (8, None, False)):
        monkeypatch.setattr(peak_flops, "other_work", lambda cpus, work=work: work)
        reason = peak_flops.busy_machine(threads)
        assert (reason == f"other processes kept {work:.1f} of 8 CPUs busy") if busy else reason is None, \
            (threads, work)
    work = peak_flops.other_work({0})  # this process sleeps while it samples: its own work is not counted
    assert work is None or 0.0 <= work <= 1.0


def test_a_cpu_peak_measured_under_load_is_never_kept_and_a_beaten_one_is_measured_again(tmp_path, monkeypatch):
    """Measured while the cores were busy, a peak is low (every later MFU would be too high): used once, not kept.
    Measured again (a run beat the cached one): replaced when the machine is quiet, else dropped."""
    import json

    from lmrecipes import peak_flops

    measured, load = iter([1e9] * 5 + [4e9] * 5 + [8e9] * 5 + [2e9] * 5), {"now": 9.0}
    monkeypatch.setattr(peak_flops, "measure_cpu_matmul_flops", lambda dtype: next(measured))
    monkeypatch.setattr(peak_flops, "_MEASURED_UNDER_LOAD", {})  # not this test session's own measurements
    monkeypatch.setattr(peak_flops, "other_work", lambda cpus: load["now"])
    monkeypatch.setattr(peak_flops, "usable_cpus", lambda: {0, 1})
    cache = tmp_path / "peaks.json"
    peak, source = peak_flops.cpu_peak_flops("fp32", cache)
    assert peak == 1e9 and "while the machine was busy (other processes kept 9.0 of 2 CPUs busy)" in source and \
        "not kept" in source
    assert not cache.exists()
    assert peak_flops.cpu_peak_flops("fp32", cache) == (peak, source), "still busy: the process's own, not again"
    load["now"] = 0.0
    assert peak_flops.cpu_peak_flops("fp32", cache)[0] == 4e9  # quiet: kept
    (key, kept), = json.loads(cache.read_text()).items()
    assert kept == 4e9 and peak_flops.cpu_peak_flops("fp32", cache) == (4e9, f"CPU matmul peak measured earlier on "
                                                                              f"this machine ({key})")
    cache.write_text(json.dumps({key: 4e9, "another CPU": 1.0}))
    peak, source = peak_flops.cpu_peak_flops("fp32", cache, remeasure=True)
    assert peak == 8e9 and "measured again" in source and json.loads(cache.read_text())[key] == 8e9
    load["now"] = 9.0
    peak, source = peak_flops.cpu_peak_flops("fp32", cache, remeasure=True)
    assert peak == 2e9 and "busy" in source and json.loads(cache.read_text()) == {"another CPU": 1.0}


def measured_mfu(tmp_path, peak, remeasure=None, tokens=5000):
    """The metrics of a run of 1e6 FLOPs/token that trained `tokens` tokens in 1 s against `peak`."""
    callback = ThroughputCallback(flops_per_token=1e6, peak_flops=peak, world_size=1, remeasure_peak=remeasure)
    args, state = TrainingArguments(output_dir=str(tmp_path), report_to="none"), TrainerState()
    state.num_input_tokens_seen = 0
    callback.on_train_begin(args, state, None)
    callback.train_seconds, state.num_input_tokens_seen = 1.0, tokens
    callback.on_train_end(args, state, None)
    return callback


def test_an_mfu_that_reaches_its_peak_basis_measures_the_peak_again_or_is_not_trusted(tmp_path):
    """A peak is what the device can do: a run that reaches it (5e9 FLOP/s against 1e9) proves the basis wrong. A
    CPU's peak is measured again once; if the run still reaches it, MFU is unknown, never 100%."""
    calls = []
    again = measured_mfu(tmp_path, 1e9, lambda: calls.append(1) or (1e10, "measured again"))
    assert again.metrics["mfu"] == pytest.approx(0.5) and again.metrics["mfu_trusted"] is True
    assert again.metrics["mfu_peak_flops_per_device"] == 1e10 and again.metrics["mfu_peak_source"] == "measured again"
    still = measured_mfu(tmp_path, 1e9, lambda: calls.append(1) or (2e9, "measured again, busy"))
    assert still.metrics["mfu"] is None and still.metrics["mfu_trusted"] is False
    still._update(TrainerState(num_input_tokens_seen=100))  # later updates: still not trusted, not measured again
    assert still.metrics["mfu"] is None and len(calls) == 2
    exactly = measured_mfu(tmp_path, 5e9)  # a data sheet's peak (no measuring again), reached exactly
    assert exactly.metrics["mfu"] is None and exactly.metrics["mfu_trusted"] is False
    assert measured_mfu(tmp_path, 1e10).metrics["mfu_trusted"] is True
    assert measured_mfu(tmp_path, None).metrics["mfu_trusted"] is None  # no basis: unknown, not untrusted
