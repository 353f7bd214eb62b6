"""Tokenizer training: BPE, WordPiece and Unigram round-trip through save_pretrained / AutoTokenizer."""

import gzip
import json
import os
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from conftest import REPO
from lmrecipes.arguments import TokenizerArguments
from lmrecipes.objectives import OBJECTIVES
from lmrecipes.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def texts():
    with gzip.open(REPO / "data" / "corpus" / "austen.jsonl.gz", "rt", encoding="utf-8") as handle:
        text = json.loads(handle.readline())["text"][:200_000]
    return [text[i : i + 2000] for i in range(0, len(text), 2000)]


@pytest.mark.parametrize("kind, objective", [("bpe", "causal_lm"), ("wordpiece", "masked_lm"),
                                             ("unigram", "causal_lm")])
def test_trained_tokenizer_round_trips(tmp_path, texts, kind, objective):
    args = TokenizerArguments(tokenizer_type=kind, vocab_size=600, lowercase=kind == "wordpiece")
    tokenizer = train_tokenizer(texts, args, OBJECTIVES[objective])
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) == len(tokenizer) <= 600
    sample = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
    ids = reloaded(sample, add_special_tokens=False)["input_ids"]
    assert ids == tokenizer(sample, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(sample) / 2, "the tokenizer learned merges, not characters"
    decoded = reloaded.decode(ids).strip()
    assert decoded == (sample.lower() if kind == "wordpiece" else sample)
    if objective == "causal_lm":
        assert reloaded.eos_token == "</s>" and reloaded.pad_token == "<pad>" and reloaded.bos_token == "<s>"
    else:
        assert reloaded.mask_token == "[MASK]" and reloaded.cls_token == "[CLS]"
        encoded = reloaded("a pair", "of texts")["input_ids"]
        assert encoded[0] == reloaded.cls_token_id and encoded.count(reloaded.sep_token_id) == 2


def test_special_tokens_come_from_the_recipe(texts):
    args = TokenizerArguments(vocab_size=300, special_tokens={"eos_token": "<|end|>", "pad_token": "<|pad|>"})
    tokenizer = train_tokenizer(texts[:20], args, OBJECTIVES["causal_lm"])
    assert tokenizer.eos_token == "<|end|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.convert_tokens_to_ids("<|end|>") < 4, "special tokens come first in the vocabulary"


def test_train_tokenizer_script_saves_a_loadable_tokenizer(tmp_path, small_corpus):
    out = tmp_path / "tok"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_tokenizer.py"), str(REPO / "recipes/tiny-bert/pretrain.yaml"),
         "--train_file", small_corpus, "--vocab_size", "700", "--validation_fraction", "0.2", "--save_dir", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "saved to" in result.stdout
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 700 and tokenizer.mask_token == "[MASK]"


def test_a_cached_tokenizer_is_reused_only_whole(tmp_path, texts, caplog):
    """A cache entry is complete once its manifest (written last) is there and its files still have the sizes it
    records: a tokenizer missing tokenizer_config.json (it used to be reused without its special tokens), a
    truncated tokenizer.json or an entry without manifest is trained again, with a warning naming it; the
    `.tmp-*` folder of a killed write is removed."""
    from lmrecipes.cache import CACHE_MANIFEST
    from lmrecipes.tokenizer import get_or_train_tokenizer

    args = TokenizerArguments(vocab_size=300)
    trainings = []

    def texts_factory():
        trainings.append(1)
        return texts[:20]

    def tokenizer():
        return get_or_train_tokenizer(args, OBJECTIVES["causal_lm"], texts_factory, "corpus", tmp_path)

    first = tokenizer()
    [entry] = [p for p in (tmp_path / "tokenizers").iterdir() if p.is_dir()]
    assert (entry / CACHE_MANIFEST).is_file() and len(trainings) == 1
    assert tokenizer().get_vocab() == first.get_vocab() and len(trainings) == 1  # reused
    import socket

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / "tokenizers" / f".tmp-{entry.name}-{socket.gethostname()}-{ended.stdout.strip()}-abc"
    killed.mkdir()  # what a build killed midway leaves
    alive = tmp_path / "tokenizers" / f".tmp-{entry.name}-{socket.gethostname()}-{os.getpid()}-def"
    alive.mkdir()  # a build going on: kept
    for damage, expected in ((lambda: (entry / "tokenizer_config.json").unlink(), "tokenizer_config.json is missing"),
                             (lambda: (entry / "tokenizer.json").write_text("{"), "tokenizer.json is 1 bytes"),
                             (lambda: (entry / CACHE_MANIFEST).unlink(), f"no {CACHE_MANIFEST}")):
        damage()
        caplog.clear()
        again = tokenizer()
        assert f"The cached tokenizer at {entry} is built again: {expected}" in caplog.text
        assert again.get_vocab() == first.get_vocab() and again.eos_token == first.eos_token
    assert len(trainings) == 4 and not killed.exists() and alive.exists()


def test_a_cache_that_cannot_be_read_or_written_is_one_line(tmp_path, texts, monkeypatch):
    """A cached tokenizer damaged without a change of size (a vocabulary entry altered): one line naming the
    folder (a traceback of the tokenizers library, before); a cache on a read-only disk: one line naming the keys
    that move it."""
    import errno

    from lmrecipes import RecipeError, cache
    from lmrecipes.tokenizer import get_or_train_tokenizer

    def tokenizer(root):
        return get_or_train_tokenizer(TokenizerArguments(vocab_size=300), OBJECTIVES["causal_lm"],
                                      lambda: texts[:20], "corpus", root)

    tokenizer(tmp_path)
    [entry] = [p for p in (tmp_path / "tokenizers").iterdir() if p.is_dir()]
    text = (entry / "tokenizer.json").read_text()
    merge = json.loads(text)["model"]["merges"][-1]
    first = merge[0] if isinstance(merge, list) else merge.split()[0]
    at = text.index(f'"{first}":', text.index('"vocab"'))  # the vocabulary entry a merge needs, same length
    (entry / "tokenizer.json").write_text(text[:at] + '"' + "Q" * len(first.encode()) + text[at + len(first) + 1:])
    with pytest.raises(RecipeError, match=rf"the cached tokenizer at {entry} cannot be read \(.*\); delete that"):
        tokenizer(tmp_path)

    import resource

    limits = resource.getrlimit(resource.RLIMIT_FSIZE)  # ulimit -f: the tokenizers library's plain Exception
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, limits[1]))  # (Python ignores SIGXFSZ: writes fail, EFBIG)
    try:
        with pytest.raises(RecipeError, match=r"cannot write the cached tokenizer at .* \(File too large\): set "
                                              r"LMRECIPES_CACHE or data_cache_dir to a writable folder"):
            tokenizer(tmp_path / "size-limit")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)

    (tmp_path / "a-file").write_text("x")  # LMRECIPES_CACHE naming a file (was: a NotADirectoryError traceback)
    with pytest.raises(RecipeError, match=r"cannot write the cached tokenizer at .* \(Not a directory\)"):
        tokenizer(tmp_path / "a-file")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache, "_build_entry", read_only)
    with pytest.raises(RecipeError, match=r"cannot write the cached tokenizer at .* \(Read-only file system\): set "
                                          r"LMRECIPES_CACHE or data_cache_dir to a writable folder"):
        tokenizer(tmp_path / "read-only")


def test_train_tokenizer_refuses_a_save_dir_that_is_a_file(tmp_path):
    """It printed "saved to FILE" and saved nothing."""
    from importlib import util

    from lmrecipes import RecipeError

    spec = util.spec_from_file_location("train_tokenizer_script", REPO / "scripts" / "train_tokenizer.py")
    script = util.module_from_spec(spec)
    spec.loader.exec_module(script)
    taken = tmp_path / "taken"
    taken.write_text("x")
    with pytest.raises(RecipeError, match=rf"key 'save_dir': {taken} is a file, not a folder"):
        script.SaveArguments(save_dir=str(taken))
