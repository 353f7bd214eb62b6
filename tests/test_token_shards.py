"""Token shards: a corpus tokenized once by scripts/tokenize_corpus.py, trained on by runs of any block_size, read
by each process of a launch on its own, resumed at the exact position; bad shards refused in one line."""

import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from transformers import TrainerCallback

import lmrecipes
from conftest import LLAMA_PRETRAIN, REPO, TINY_LLAMA, read_json, run_ddp_probe

CORPUS_KEYS = {"vocab_size": 512, "validation_fraction": 0.15}


@pytest.fixture(scope="module")
def shards(tmp_path_factory, small_corpus):
    """The small corpus's training split as token shards, written as a user does (the script, one process)."""
    folder = tmp_path_factory.mktemp("shards") / "tiny"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "tokenize_corpus.py"), LLAMA_PRETRAIN,
                             "--train_file", small_corpus, "--vocab_size", "512", "--validation_fraction", "0.15",
                             "--token_shards_dir", str(folder)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Token shards in {folder}: " in result.stdout
    return folder


def _corpus_blocks(small_corpus, token_shards_dir=None, workers=None):
    """(training blocks, tokenizer, data arguments) as a run of the tiny recipe prepares them."""
    from lmrecipes.arguments import PRETRAIN_ARGUMENTS
    from lmrecipes.data.packing import prepare_pretraining_data
    from lmrecipes.objectives.causal_lm import CAUSAL_LM
    from lmrecipes.pretraining import load_corpus_and_tokenizer

    model_args, tokenizer_args, data_args, _, _ = lmrecipes.load_recipe(
        LLAMA_PRETRAIN, PRETRAIN_ARGUMENTS, train_file=[small_corpus], block_size=64, token_shards_dir=token_shards_dir,
        preprocessing_num_workers=workers, **CORPUS_KEYS)
    raw, fingerprint, tokenizer = load_corpus_and_tokenizer(model_args, tokenizer_args, data_args, CAUSAL_LM)
    train, _, _ = prepare_pretraining_data(raw, fingerprint, tokenizer, CAUSAL_LM, data_args)
    return train, tokenizer, raw


def test_shards_hold_the_blocks_that_tokenizing_the_corpus_gives(shards, small_corpus, tmp_path):
    """Written by one process, the shards give the very blocks of the normal (Arrow) path; written by 2 workers,
    the same documents in another order."""
    from_shards, tokenizer, raw = _corpus_blocks(small_corpus, str(shards))
    normal, _, _ = _corpus_blocks(small_corpus)
    assert len(from_shards) == len(normal) > 1000
    assert [from_shards[i]["input_ids"] for i in range(len(normal))] == normal["input_ids"]
    assert from_shards[5]["labels"] == from_shards[5]["input_ids"]

    index = lmrecipes.tokenize_corpus(LLAMA_PRETRAIN, train_file=[small_corpus], token_shards_dir=str(tmp_path / "w2"),
                                      preprocessing_num_workers=2, **CORPUS_KEYS)
    one, two = (np.fromfile(folder / "train-00000.bin", dtype=np.uint16) for folder in (shards, tmp_path / "w2"))
    documents = [np.array(ids + [tokenizer.eos_token_id]) for ids in
                 tokenizer([row["text"] for row in raw["train"]], add_special_tokens=False)["input_ids"]]
    assert index["documents"] == len(documents) and index["tokens"] == sum(map(len, documents)) == len(two)
    assert not np.array_equal(one, two) and sorted(one.tolist()) == sorted(two.tolist())
    ends = np.flatnonzero(two == tokenizer.eos_token_id)
    pieces = sorted(tuple(piece) for piece in np.split(two, ends + 1) if len(piece))
    assert pieces == sorted(tuple(d) for d in documents)


def test_two_processes_read_their_own_blocks_from_the_shards(shards, small_corpus, tmp_path):
    """DDP over 2 processes on token shards: each rank's loader is its own (no dispatch), no block is read by both,
    and both end with the same weights."""
    out = tmp_path / "ddp"
    ranks = run_ddp_probe(LLAMA_PRETRAIN, small_corpus, out, {**TINY_LLAMA, **CORPUS_KEYS, "max_steps": 4,
                                                              "token_shards_dir": str(shards)})
    assert [(r["world_size"], r["steps"], r["loader"]) for r in ranks] == [(2, 4, "DataLoaderShard")] * 2
    blocks = [set(r["blocks"]) for r in ranks]
    assert all(len(b) == 4 * 8 for b in blocks) and not blocks[0] & blocks[1]
    assert ranks[0]["params"] == ranks[1]["params"]


def test_a_run_on_shards_resumes_at_its_exact_position(shards, small_corpus, tmp_path, monkeypatch):
    """Stopped at step 3 of 6 and resumed: the same blocks in the same order, the same final weights as a run that
    was never stopped; no block is read to skip the ones trained on."""

    class Blocks(TrainerCallback):
        def __init__(self, stop_at=None):
            self.seen, self.stop_at = [], stop_at

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            def record(module, inputs, kw):
                if module.training:
                    self.seen.append(kw["input_ids"].tolist())
            model.register_forward_pre_hook(record, with_kwargs=True)

        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == self.stop_at

    settings = {**TINY_LLAMA, **CORPUS_KEYS, "train_file": [small_corpus], "token_shards_dir": str(shards),
                "max_steps": 6, "save_steps": 3, "seed": 5}
    from lmrecipes.data.token_shards import TokenShardBlocks

    read, block = [], TokenShardBlocks.__getitem__
    monkeypatch.setattr(TokenShardBlocks, "__getitem__", lambda self, i: read.append(i) or block(self, i))
    whole, first, second = Blocks(), Blocks(stop_at=3), Blocks()
    done = lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(tmp_path / "whole"), callbacks=[whole])
    besides_training = len(read) - 6 * 8  # blocks read outside the training steps (a run's checks of a sample)
    lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(tmp_path / "first"), callbacks=[first])
    read.clear()
    resumed = lmrecipes.pretrain(LLAMA_PRETRAIN, **settings, output_dir=str(tmp_path / "second"), callbacks=[second],
                                 resume_from_checkpoint=str(tmp_path / "first" / "checkpoint-3"))
    assert len(whole.seen) == 6 and len(first.seen) == 3 and first.seen + second.seen == whole.seen
    assert len(read) == 3 * 8 + besides_training, "the blocks of the 3 steps left, none read to skip the first 3"
    assert abs(resumed["eval_loss"] - done["eval_loss"]) < 1e-6
    assert read_json(tmp_path / "second" / "trainer_state.json")["global_step"] == 6


def test_shards_that_do_not_fit_the_run_are_refused_in_one_line(shards, small_corpus, tmp_path):
    base = {**TINY_LLAMA, **CORPUS_KEYS, "train_file": [small_corpus], "max_steps": 1}
    with pytest.raises(lmrecipes.RecipeError, match=r"key 'token_shards_dir': .*missing does not exist; write it "
                                                    r"first with scripts/tokenize_corpus.py"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **base, token_shards_dir=str(tmp_path / "missing"),
                           output_dir=str(tmp_path / "a"))
    with pytest.raises(lmrecipes.RecipeError, match="written with another tokenizer than this recipe's"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **{**base, "vocab_size": 600}, token_shards_dir=str(shards),
                           output_dir=str(tmp_path / "b"))
    with pytest.raises(lmrecipes.RecipeError, match=r"another corpus \(files"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **{**base, "validation_fraction": 0.2}, token_shards_dir=str(shards),
                           output_dir=str(tmp_path / "c"))
    other = tmp_path / "other-separator"
    shutil.copytree(shards, other)
    index = (other / "token-shards.json").read_text()
    (other / "token-shards.json").write_text(index.replace('"eos_token"', '"sep_token"'))  # same size: whole
    with pytest.raises(lmrecipes.RecipeError, match="written with another document separator"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **base, token_shards_dir=str(other), output_dir=str(tmp_path / "e"))
    described = tmp_path / "index-edited"  # the same size, another token count
    shutil.copytree(shards, described)
    text = (described / "token-shards.json").read_text()
    count = str(read_json(shards / "token-shards.json")["tokens"])
    (described / "token-shards.json").write_text(text.replace(count, ("9" if count[0] != "9" else "8") + count[1:]))
    with pytest.raises(lmrecipes.RecipeError, match="does not describe its shards"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **base, token_shards_dir=str(described), output_dir=str(tmp_path / "f"))
    overwritten = tmp_path / "overwritten"  # every token replaced in place, the file's size kept
    shutil.copytree(shards, overwritten)
    np.full(read_json(shards / "token-shards.json")["tokens"], 65535, dtype=np.uint16).tofile(
        overwritten / "train-00000.bin")
    with pytest.raises(lmrecipes.RecipeError, match=r"holds token id 65535 at block \d+, past the tokenizer's 512"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **base, token_shards_dir=str(overwritten), output_dir=str(tmp_path / "g"))
    cut = tmp_path / "cut"
    cut.mkdir()
    for path in shards.iterdir():
        (cut / path.name).write_bytes(path.read_bytes()[:1000] if path.suffix == ".bin" else path.read_bytes())
    with pytest.raises(lmrecipes.RecipeError, match=r"are not whole \(train-00000.bin is 1000 bytes"):
        lmrecipes.pretrain(LLAMA_PRETRAIN, **base, token_shards_dir=str(cut), output_dir=str(tmp_path / "d"))
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_a_stopped_write_leaves_nothing_and_a_folder_of_other_files_is_refused(small_corpus, tmp_path, monkeypatch):
    """A write stopped after its first shard file leaves no token_shards_dir, and a killed one's `.tmp-` folder is
    removed by the next write (its name has dashes, as the machine's may), which writes them whole; a folder holding
    files of the user's is never taken."""
    from lmrecipes.data import token_shards

    keys = {"train_file": [small_corpus], **CORPUS_KEYS}
    mine = tmp_path / "my-data"
    mine.mkdir()
    (mine / "corpus.txt").write_text("the user's own file")
    with pytest.raises(lmrecipes.RecipeError, match=r"key 'token_shards_dir': .*my-data holds files that are no "
                                                    r"token shards of lmrecipes \(corpus.txt\); name a new or empty"):
        lmrecipes.tokenize_corpus(LLAMA_PRETRAIN, token_shards_dir=str(mine), **keys)
    assert [p.name for p in tmp_path.iterdir()] == ["my-data"] and list(mine.iterdir()) == [mine / "corpus.txt"]
    (mine / "token-shards.json").write_text('{"mine": 1}')  # a file of that name is not enough
    with pytest.raises(lmrecipes.RecipeError, match=r"holds files that are no token shards of lmrecipes \(corpus.txt, "
                                                    r"token-shards.json\)"):
        lmrecipes.tokenize_corpus(LLAMA_PRETRAIN, token_shards_dir=str(mine), **keys)
    (tmp_path / "link").symlink_to(mine)
    with pytest.raises(lmrecipes.RecipeError, match="is a link; name the folder itself"):
        lmrecipes.tokenize_corpus(LLAMA_PRETRAIN, token_shards_dir=str(tmp_path / "link"), **keys)
    (tmp_path / "link").unlink()
    assert sorted(p.name for p in mine.iterdir()) == ["corpus.txt", "token-shards.json"]

    folder = tmp_path / "tiny-shards"
    killed = tmp_path / f".tmp-tiny-shards-{socket.gethostname()}-999999999-x1"  # a writer that has ended
    killed.mkdir()
    written = []

    def stop_after_the_first(self, path, *args):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        return original(self, path, *args)

    original = token_shards.np.ndarray.tofile
    monkeypatch.setattr(token_shards, "TOKENS_PER_SHARD", 30_000)
    with monkeypatch.context() as patch:
        patch.setattr(token_shards, "_write_tokens", lambda tokens, path: stop_after_the_first(tokens, path))
        with pytest.raises(KeyboardInterrupt):
            lmrecipes.tokenize_corpus(LLAMA_PRETRAIN, token_shards_dir=str(folder), **keys)
    # the killed write's folder was removed, the stopped one's too (Ctrl-C unwinds)
    assert written and sorted(p.name for p in tmp_path.iterdir()) == [".tiny-shards.lock", "my-data"]
    index = lmrecipes.tokenize_corpus(LLAMA_PRETRAIN, token_shards_dir=str(folder), **keys)
    assert len(index["shards"]) == 4 and sum(s["tokens"] for s in index["shards"]) == index["tokens"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny-shards.lock", "my-data", "tiny-shards"]
    # shards damaged (cut short) beside a file of the user's: refused, not written over
    (folder / "README.md").write_text("my notes on these shards")
    (folder / "train-00001.bin").write_bytes((folder / "train-00001.bin").read_bytes()[:100])
    with pytest.raises(lmrecipes.RecipeError, match=r"holds files that are no token shards of lmrecipes \(README.md\)"):
        lmrecipes.tokenize_corpus(LLAMA_PRETRAIN, token_shards_dir=str(folder), **keys)
    (folder / "README.md").unlink()
    assert lmrecipes.tokenize_corpus(LLAMA_PRETRAIN, token_shards_dir=str(folder), **keys) == index  # written again
