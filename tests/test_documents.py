"""Document-aware packing: positions restart at each document of a packed block and attention stays inside it."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import lmrecipes
from lmrecipes.objectives import OBJECTIVES
from lmrecipes.objectives.documents import (
    DocumentPositionsCollator,
    causal_masking_problem,
    document_positions,
    use_document_masking,
)

SEP = 2


def test_positions_restart_after_each_separator():
    ids = torch.tensor([[7, 8, SEP, 9, 10, 11, SEP, 12], [SEP, 5, 6, 7, 8, 9, 10, SEP]])
    assert document_positions(ids, SEP).tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 0, 1, 2, 3, 4, 5, 6]]
    batch = DocumentPositionsCollator(SEP)([{"input_ids": ids[0], "labels": ids[0]}])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]] and "attention_mask" not in batch


@pytest.mark.parametrize("model", [
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=2, vocab_size=64)),
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=64)),
], ids=["llama", "gpt2"])
def test_a_tokens_logits_do_not_change_when_another_document_in_its_block_changes(model):
    model.eval()
    block = torch.tensor([[5, 6, 7, 8, 9, SEP, 20, 21, 22, 23, 24, 25]])
    other = block.clone()
    other[0, :5] = torch.tensor([30, 31, 32, 33, 34])  # the first document changed, the second not
    collate = DocumentPositionsCollator(SEP)
    with torch.no_grad():
        masked = [model(**collate([{"input_ids": b[0]}]), use_cache=False).logits[0, 6:] for b in (block, other)]
        plain = [model(input_ids=b).logits[0, 6:] for b in (block, other)]
    assert torch.allclose(*masked, atol=1e-5), "the second document saw the first"
    assert not torch.allclose(*plain, atol=1e-3), "without document masking it does (the test can fail)"
    assert causal_masking_problem(model) is None


def test_the_choice_is_logged_and_refused_where_unsupported(caplog):
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
    with caplog.at_level("INFO", logger="lmrecipes"):
        assert use_document_masking(OBJECTIVES["causal_lm"], model, "auto") is True
        assert use_document_masking(OBJECTIVES["causal_lm"], model, "false") is False
        assert use_document_masking(OBJECTIVES["masked_lm"], model, "auto") is False
    assert "positions restart and attention stays inside each document (document_masking auto)" in caplog.text
    assert model.config.use_cache is False  # transformers builds the document mask only without a KV cache
    assert "masked_lm: transformers builds document masks from restarting position ids for causal" in caplog.text
    with pytest.raises(lmrecipes.RecipeError, match=r"^key 'document_masking': masked_lm: .* \(set "
                                                   r"document_masking: auto or false\)$"):
        use_document_masking(OBJECTIVES["masked_lm"], model, "true")
