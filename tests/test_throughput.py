"""FLOPs per token and MFU arithmetic against hand-computed values (timings themselves are never asserted)."""

import pytest
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, TrainerState, TrainingArguments

from lmrecipes.throughput import ThroughputCallback, model_flops_per_token, table_peak_flops


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


def test_mfu_and_tokens_per_second_arithmetic(tmp_path):
    # 2 processes, 8,000 tokens over both in 2 s of step time: 4,000 tokens/s, 2,000 per device;
    # 1e6 FLOPs/token at a 1e10 FLOP/s peak per device -> MFU 0.2
    callback = ThroughputCallback(flops_per_token=1e6, peak_flops=1e10, world_size=2, hardware="2 x test")
    args, state = TrainingArguments(output_dir=str(tmp_path), report_to="none"), TrainerState()
    state.num_input_tokens_seen = 0
    callback.on_train_begin(args, state, None)
    callback.step_seconds = 2.0
    state.num_input_tokens_seen = 8000
    callback.on_train_end(args, state, None)
    assert callback.metrics["train_tokens_per_second"] == pytest.approx(4000)
    assert callback.metrics["train_tokens_per_second_per_device"] == pytest.approx(2000)
    assert callback.metrics["mfu"] == pytest.approx(0.2)
    assert callback.metrics["hardware"] == "2 x test"

    unknown = ThroughputCallback(flops_per_token=1e6, peak_flops=None, world_size=1)
    unknown.on_train_begin(args, TrainerState(), None)
    unknown.step_seconds, state.num_input_tokens_seen = 1.0, 100
    unknown.on_train_end(args, state, None)
    assert unknown.metrics["mfu"] is None  # stated as unknown, never guessed


def test_peak_flops_table():
    assert table_peak_flops("NVIDIA H200", "bf16") == 989e12
    assert table_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert table_peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert table_peak_flops("Some Future Accelerator", "bf16") is None
