"""The GPU recipes run on a CPU, two steps, as shipped except what needs the Hub or a GPU's time: a part of the
embedded corpus instead of FineWeb-Edu, a small trained tokenizer instead of a Hub one, short blocks and batches, no
torch.compile. bf16 (auto) and the fused optimizer stay as the recipes set them (bf16 runs on the CPU where it has
native bf16). A user with a GPU never meets a recipe error that a CPU could have shown."""

import json
import math

import pytest

import lmrecipes
from conftest import REPO
from lmrecipes.precision import cpu_bf16_choice, cpu_flags

SMOKE = {"dataset_name": "", "dataset_config_name": "", "validation_fraction": 0.1,
         "tokenizer_name_or_path": "", "vocab_size": 1024, "block_size": 64, "per_device_train_batch_size": 2,
         "per_device_eval_batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 2, "max_eval_samples": 4,
         "torch_compile": False, "dataloader_num_workers": 0, "preprocessing_num_workers": 1, "report_to": "none",
         "logging_steps": 1, "disable_tqdm": True}


@pytest.mark.parametrize("recipe, hidden, layers", [
    ("llama-125m/pretrain.yaml", 768, 12),
    ("llama-125m/pretrain-gpu-benchmark.yaml", 768, 12),
    ("bert-base/pretrain.yaml", 768, 12),
    ("electra-small/pretrain.yaml", 256, 12),
])
def test_a_gpu_recipe_runs_two_steps_on_the_cpu(tmp_path, capsys, small_corpus, recipe, hidden, layers):
    out = tmp_path / "run"
    results = lmrecipes.pretrain(str(REPO / "recipes" / recipe), **SMOKE, train_file=[small_corpus],
                                 output_dir=str(out))
    log = capsys.readouterr().out
    bf16, why = cpu_bf16_choice(cpu_flags())
    assert f"Precision: {'bf16 autocast' if bf16 else 'fp32'} ({why})" in log
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (hidden, layers)  # the recipe's model, full size
    assert (out / "model.safetensors").is_file() and math.isfinite(results["eval_loss"])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
