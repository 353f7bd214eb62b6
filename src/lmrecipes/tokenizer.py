"""Train a BPE / WordPiece / Unigram tokenizer with `tokenizers` (cached per corpus and settings), or load an
existing one; the pad token classification batches need."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .arguments import TokenizerArguments
from .cache import cached
from .errors import RecipeError, first_line
from .launch import made_once
from .objectives import Objective

logger = logging.getLogger(__name__)

SPECIAL_TOKEN_ROLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def special_tokens_for(args: TokenizerArguments, objective: Objective) -> dict[str, str]:
    tokens = {**objective.special_tokens, **args.special_tokens}
    for role in tokens:
        if role not in SPECIAL_TOKEN_ROLES:
            raise RecipeError(f"key 'special_tokens': unknown role '{role}' (roles: {', '.join(SPECIAL_TOKEN_ROLES)})")
    return tokens


def _limited(texts: Iterable[str], max_bytes: int | None) -> Iterator[str]:
    seen = 0
    for text in texts:
        if max_bytes is not None and seen >= max_bytes:
            return
        if max_bytes is not None:
            text = text.encode("utf-8")[: max_bytes - seen].decode("utf-8", errors="ignore")
        seen += len(text.encode("utf-8"))
        yield text


def train_tokenizer(texts: Iterable[str], args: TokenizerArguments, objective: Objective) -> PreTrainedTokenizerFast:
    """Train a tokenizer on `texts` with the recipe's algorithm, vocabulary size and special tokens."""
    kind = args.tokenizer_type or objective.tokenizer_type
    specials = special_tokens_for(args, objective)
    special_list = list(dict.fromkeys(specials.values()))
    lowercase = [normalizers.Lowercase()] if args.lowercase else []

    if kind == "bpe":  # byte-level BPE (GPT-2 / Llama-3 style): never an unknown token
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), *lowercase])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=args.vocab_size, min_frequency=args.min_frequency, special_tokens=special_list,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
    elif kind == "wordpiece":  # BERT style
        tok = Tokenizer(models.WordPiece(unk_token=specials.get("unk_token", "[UNK]")))
        tok.normalizer = normalizers.BertNormalizer(lowercase=args.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=args.vocab_size, min_frequency=args.min_frequency, special_tokens=special_list,
            show_progress=False,
        )
    else:  # unigram (SentencePiece / T5 style)
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), *lowercase])
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=args.vocab_size, special_tokens=special_list, unk_token=specials.get("unk_token"),
            show_progress=False,
        )

    tok.train_from_iterator(_limited(texts, args.tokenizer_max_bytes), trainer=trainer)
    if tok.get_vocab_size() <= len(special_list):
        raise RecipeError("the tokenizer learned no vocabulary: the training text is empty")

    if "cls_token" in specials and "sep_token" in specials:  # encoders: [CLS] A [SEP] (B [SEP])
        cls, sep = specials["cls_token"], specials["sep_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
        )
    elif kind == "bpe":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, revision: str = "main", key: str):
    """AutoTokenizer.from_pretrained with a one-line error naming the recipe key."""
    looks_local = name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists()
    if looks_local and not Path(name_or_path).expanduser().exists():
        raise RecipeError(f"key '{key}': path does not exist: {name_or_path}")
    try:
        return AutoTokenizer.from_pretrained(
            str(Path(name_or_path).expanduser()) if looks_local else name_or_path,
            trust_remote_code=trust_remote_code, revision=revision,
        )
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RecipeError(f"key '{key}': cannot load a tokenizer from {name_or_path!r}: {first}") from None


def get_or_train_tokenizer(args: TokenizerArguments, objective: Objective, texts_factory, data_fingerprint: str,
                           cache_root: Path, *, trust_remote_code: bool = False):
    """Load the recipe's tokenizer, or train one once per (corpus, settings) and reuse it from the cache.

    `texts_factory()` returns an iterable of training texts; it is only called when training is needed.
    Hand-written because `tokenizers` has no notion of a cache keyed on the corpus.
    """
    if args.tokenizer_name_or_path:
        return load_tokenizer(args.tokenizer_name_or_path, trust_remote_code=trust_remote_code,
                              key="tokenizer_name_or_path")
    settings = {k: getattr(args, k) for k in ("tokenizer_type", "vocab_size", "min_frequency", "lowercase",
                                               "special_tokens", "tokenizer_max_bytes")}
    key = hashlib.sha256(json.dumps([settings, objective.name, data_fingerprint], sort_keys=True).encode()).hexdigest()
    folder = cache_root / "tokenizers" / key[:16]

    def build(tmp: Path) -> None:
        logger.info("Training a %s tokenizer (vocab %d) on the training text...",
                    args.tokenizer_type or objective.tokenizer_type, args.vocab_size)
        train_tokenizer(texts_factory(), args, objective).save_pretrained(tmp)

    reused = cached(folder, build, "cached tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # noqa: BLE001 - the tokenizers library raises plain Exceptions for a bad file
        raise RecipeError(f"the cached tokenizer at {folder} cannot be read ({first_line(err)}); delete that folder "
                          "and run again") from None
    logger.info("%s %s (%d tokens)", "Reusing the tokenizer trained earlier on this corpus:" if reused else
                "Tokenizer saved to", folder, len(tokenizer))
    return tokenizer


def _tokenizer_files(tokenizer) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {path.name: path.read_bytes() for path in Path(tmp).iterdir() if path.is_file()}


def _tokenizer_from_files(files: dict[str, bytes]):
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content)
        return AutoTokenizer.from_pretrained(tmp)


def tokenizer_made_once(make, training_args):
    """The tokenizer of a run: `make()` on process 0 alone when several processes run; the others receive its
    files through the process group and load them (launch.made_once), so it is trained once and needs no shared
    filesystem."""
    return made_once(make, training_args, _tokenizer_files, _tokenizer_from_files, "the tokenizer")


def prepare_pad_token(tokenizer) -> None:
    """Batched classification needs a pad token: use EOS when the tokenizer has no pad token (decoder LMs)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise RecipeError("the tokenizer has no pad_token and no eos_token to pad with; give it a pad token "
                              "(special_tokens.pad_token) or use another tokenizer")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("The tokenizer has no pad token: padding with its EOS token %r", tokenizer.eos_token)
