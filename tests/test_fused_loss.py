"""fused_loss: the causal LM's output layer and cross-entropy computed together in chunks give the model's own loss
and gradients, attach only where they do, and are chosen (and logged) by the recipe key."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch

import lmrecipes
from conftest import BERT_PRETRAIN, LLAMA_PRETRAIN, TINY_BERT, TINY_LLAMA
from lmrecipes import fused_loss
from lmrecipes.fused_loss import FusedCausalLMLoss, linear_cross_entropy_sum, use_fused_loss


def test_chunked_linear_cross_entropy_equals_torch(monkeypatch):
    """Loss and gradients (hidden, weight, bias) over several chunks, one of them wholly unscored, equal
    cross_entropy(hidden @ W.T + b) summed over the scored tokens."""
    monkeypatch.setattr(fused_loss, "CHUNK_ELEMENTS", 16 * 50)  # 16 tokens a chunk: 37 tokens -> 3 chunks
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 24, generator=generator, dtype=torch.float64).float().requires_grad_()
    weight = torch.randn(50, 24, generator=generator).requires_grad_()
    bias = torch.randn(50, generator=generator).requires_grad_()
    labels = torch.randint(0, 50, (37,), generator=generator)
    labels[16:32] = -100  # the second chunk scores nothing
    labels[3] = -100
    fused = linear_cross_entropy_sum(hidden, weight, bias, labels)
    (2.5 * fused).backward()
    fused_grads = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    reference = torch.nn.functional.cross_entropy(hidden @ weight.t() + bias, labels, reduction="sum")
    (2.5 * reference).backward()
    assert fused.item() == pytest.approx(reference.item(), rel=1e-6)
    for got, expected in zip(fused_grads, (hidden.grad, weight.grad, bias.grad)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert fused_grads[0][16:32].abs().max() == 0  # unscored tokens get no gradient
    with torch.no_grad():  # evaluation path: the loss alone
        assert linear_cross_entropy_sum(hidden, weight, None, labels).item() == pytest.approx(
            torch.nn.functional.cross_entropy(hidden @ weight.t(), labels, reduction="sum").item(), rel=1e-6)


def tiny_causal_lm(model_type: str, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = {"gpt2": dict(n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)}.get(
        model_type, dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, head_dim=8))
    config = AutoConfig.for_model(model_type, vocab_size=300, **sizes, **overrides)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def training_step(model, ids, labels, autocast=False):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(input_ids=ids, labels=labels, num_items_in_batch=torch.tensor(50))
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("model_type, overrides", [("llama", {}), ("llama", {"tie_word_embeddings": True}),
                                                   ("gpt2", {}), ("qwen2", {})])
def test_a_causal_lm_trains_with_its_own_loss_and_gradients(model_type, overrides):
    """Through the model's forward, as the Trainer calls it (labels, num_items_in_batch): the same loss and the same
    gradient for every parameter (tied embeddings too) in fp32; in bf16 autocast no farther from fp32 than the
    model's own bf16 step; evaluation returns the model's real logits; detach leaves the model as it was."""
    own = tiny_causal_lm(model_type, **overrides).train()
    model = copy.deepcopy(own)
    fused = FusedCausalLMLoss(model)
    assert fused.attach() is None and model.training
    ids = torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :6] = -100
    own_out, own_grads = training_step(own, ids, labels)
    fused_out, fused_grads = training_step(model, ids, labels)
    assert fused_out.loss.item() == pytest.approx(own_out.loss.item(), rel=1e-6)
    assert fused_out.logits.numel() == 0  # no [tokens x vocabulary] logits in a fused training call

    def distance(grads):
        return max(((grads[name] - grad).norm() / grad.norm()).item() for name, grad in own_grads.items())

    assert distance(fused_grads) < 1e-5
    for name, grad in own_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)

    own_bf16, fused_bf16 = training_step(own, ids, labels, True)[1], training_step(model, ids, labels, True)[1]
    assert distance(fused_bf16) < 1.5 * distance(own_bf16) + 1e-3

    model.eval()
    own.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, labels=labels).logits, own(input_ids=ids).logits)
    fused.detach()
    assert "forward" not in vars(fused.head) and "_loss_function" not in vars(model)
    model.train()
    assert model(input_ids=ids, labels=labels).logits.shape == (3, 20, 300)


def test_the_mean_loss_and_another_ignore_index_match_too():
    """Without num_items_in_batch the loss is the mean over scored tokens; a loss called with ignore_index=7 skips
    token 7 as transformers' ForCausalLMLoss does; gradients equal."""
    own = tiny_causal_lm("llama").train()
    model = copy.deepcopy(own)
    assert FusedCausalLMLoss(model).attach() is None
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(2))
    ids[:, 3] = 7
    for kwargs in ({}, {"ignore_index": 7}):
        losses, grads = [], []
        for m in (own, model):
            m.zero_grad()
            loss = m(input_ids=ids, labels=ids, **kwargs).loss
            loss.backward()
            losses.append(loss.item())
            grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
        assert losses[1] == pytest.approx(losses[0], rel=1e-6), kwargs
        assert ((grads[1] - grads[0]).norm() / grads[0].norm()).item() < 1e-5


def test_a_model_that_changes_its_logits_keeps_its_own_loss():
    """Gemma 2 soft-caps its logits between output layer and loss: the probe finds it, auto keeps the model's own
    loss (and says why), true is refused in one line naming the key. So are a model whose own loss is another one
    (no shift: the probe's numbers differ) and an output layer that is a subclass of nn.Linear."""
    model = tiny_causal_lm("gemma2")
    fused = FusedCausalLMLoss(model)
    assert "changed its output layer's result" in fused.attach()
    assert "_loss_function" not in vars(model) and "forward" not in vars(fused.head)
    other_loss = tiny_causal_lm("llama")
    other_loss.loss_type = "ForMaskedLM"  # transformers' masked-LM loss: labels not shifted
    assert "differs from the fused one" in FusedCausalLMLoss(other_loss).attach()

    class ScaledHead(torch.nn.Linear):
        def forward(self, hidden):
            return super().forward(hidden * 0.25)

    scaled = tiny_causal_lm("llama")
    scaled.lm_head = ScaledHead(32, 300, bias=False)
    assert "not a plain linear layer (ScaledHead)" in FusedCausalLMLoss(scaled).attach()
    args = SimpleNamespace(fsdp="", deepspeed=None, torch_compile=False, device=torch.device("cpu"))
    assert use_fused_loss(model, args, "auto") is None
    assert "_loss_function" not in vars(model)
    with pytest.raises(lmrecipes.RecipeError, match="key 'fused_loss': the fused loss does not run on this model"):
        use_fused_loss(model, args, "true")


def test_the_setting_and_the_run_decide(caplog):
    model = tiny_causal_lm("llama")
    cpu = SimpleNamespace(fsdp="", deepspeed=None, torch_compile=False, device=torch.device("cpu"))
    with caplog.at_level("INFO", logger="lmrecipes"):
        assert use_fused_loss(model, cpu, "false") is None
        attached = use_fused_loss(model, cpu, None)
        assert attached is not None
        attached.detach()
        assert use_fused_loss(model, SimpleNamespace(**{**vars(cpu), "torch_compile": True}), "auto") is None
        gpu = SimpleNamespace(**{**vars(cpu), "device": torch.device("cuda")})
        assert use_fused_loss(model, gpu, "auto") is None
        with pytest.raises(lmrecipes.RecipeError, match=r"^key 'fused_loss': true is for CPU training \(this run "
                                                       r"trains on cuda\); for a fused loss on GPUs set "
                                                       r"use_liger_kernel: true$"):
            use_fused_loss(model, gpu, "true")
    assert "LM loss: the model's own (fused_loss: false)" in caplog.text
    assert "LM loss: output layer and cross-entropy fused, 6990 tokens a chunk" in caplog.text  # 2**21 // 300
    assert "not with torch_compile: fuses the loss itself" in caplog.text and "this run trains on cuda" in caplog.text
    for blocker, args in (("torch_compile", {"torch_compile": True}), ("DeepSpeed", {"deepspeed": "ds.json"}),
                          ("FSDP", {"fsdp": "full_shard"}), ("use_liger_kernel", {"use_liger_kernel": True}),
                          ("label_smoothing_factor", {"label_smoothing_factor": 0.1})):
        with pytest.raises(lmrecipes.RecipeError, match=f"key 'fused_loss': not with {blocker}"):
            use_fused_loss(model, SimpleNamespace(**{**vars(cpu), **args}), "true")


def test_a_pretraining_run_is_the_same_with_and_without_it(tmp_path, small_corpus, capsys):
    """The tiny recipe on CPU uses it by default (logged) and ends where the model's own loss ends (fp32, 12 steps:
    every training loss and the held-out loss within 1e-4)."""
    runs = {}
    for setting in ("auto", "false"):
        out = tmp_path / setting
        runs[setting] = lmrecipes.pretrain(LLAMA_PRETRAIN, **TINY_LLAMA, train_file=[small_corpus],
                                           validation_fraction=0.15, max_steps=12, output_dir=str(out),
                                           fused_loss=setting)
        runs[setting]["losses"] = [entry["loss"] for entry in json.loads((out / "trainer_state.json").read_text())[
            "log_history"] if "loss" in entry]
    log = capsys.readouterr().out
    assert "LM loss: output layer and cross-entropy fused" in log and "LM loss: the model's own (fused_loss: false)" \
        in log
    assert runs["auto"]["eval_loss"] == pytest.approx(runs["false"]["eval_loss"], abs=1e-4)
    assert runs["auto"]["losses"] == pytest.approx(runs["false"]["losses"], abs=1e-4)
    assert len(runs["auto"]["losses"]) == 12


def test_only_causal_lm_reads_the_key(tmp_path):
    with pytest.raises(lmrecipes.RecipeError, match="key 'fused_loss': only objective causal_lm uses it"):
        lmrecipes.pretrain(BERT_PRETRAIN, **TINY_BERT, fused_loss="true", max_steps=1, output_dir=str(tmp_path / "x"))
    with pytest.raises(lmrecipes.RecipeError, match="key 'fused_loss': auto, true or false, got 'fast'"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **TINY_LLAMA, fused_loss="fast", max_steps=1,
                           output_dir=str(tmp_path / "y"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
