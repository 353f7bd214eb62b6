"""ELECTRA (Clark et al., ICLR 2020): replaced-token detection, a loss on every token.

A small generator (a masked LM) fills the masked positions with tokens it samples; the discriminator learns which
tokens of the result were replaced. Loss = generator MLM loss + discriminator_weight x binary cross-entropy over
every non-pad token. Both are built from the ELECTRA config classes (ElectraForMaskedLM, ElectraForPreTraining) and
share their embeddings. transformers ships both heads but no training for them: `ElectraWithGenerator` below is the
hand-written part, a model whose forward is one ELECTRA step, so the stock Trainer (checkpoints, resume, DDP)
trains it. The finished run is saved as a plain discriminator (loads with AutoModelForSequenceClassification) with
the generator in `generator/` (a masked LM: the fill-mask pipeline works on it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    AutoModelForPreTraining,
    AutoTokenizer,
    ElectraConfig,
    ElectraForMaskedLM,
    ElectraForPreTraining,
)
from transformers.utils import ModelOutput

from ..errors import RecipeError, first_line
from ..throughput import matmul_weight_count, parameter_size
from ..values import parse_mapping
from .base import Objective, ObjectiveKeys, perplexity
from .masked_lm import MASKED_LM, BatchSeededMasking

logger = logging.getLogger("lmrecipes")

DEFAULT_GENERATOR_SIZE = 0.25  # the paper's best generator: 1/4 to 1/2 of the discriminator's width
DEFAULT_DISCRIMINATOR_WEIGHT = 50.0  # the paper's lambda
GENERATOR_FOLDER = "generator"
# Attributes of the training model's config that the saved discriminator does not carry.
TRAINING_ONLY = ("generator_config", "discriminator_weight", "masked_fraction")
# Per evaluated block: generator cross-entropy summed over its masked tokens, masked tokens, discriminator
# cross-entropy summed over its scored (non-pad) tokens, scored tokens, replaced tokens flagged (true positives),
# original tokens flagged (false positives), replaced tokens missed (false negatives).
STATISTICS = ("generator_loss_sum", "masked", "discriminator_loss_sum", "scored", "true_positives",
              "false_positives", "false_negatives")


@dataclass
class ElectraKeys(ObjectiveKeys):
    generator_size: float | None = field(
        default=None,
        metadata={"help": "electra: the generator's width (hidden size, attention heads, feed-forward size) as a "
                  "fraction of the discriminator's; same depth, shared embeddings. Default 0.25 (the paper's)."},
    )
    generator_config_overrides: dict | str | None = field(
        default=None,
        metadata={"help": "electra: generator config attributes set after generator_size, e.g. "
                  "{num_hidden_layers: 6}. Its hidden size may not exceed the discriminator's."},
    )
    discriminator_weight: float | None = field(
        default=None,
        metadata={"help": "electra: loss = generator MLM loss + this x replaced-token detection loss (binary "
                  "cross-entropy over every non-pad token). Default 50 (the paper's)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.generator_config_overrides is not None:
            self.generator_config_overrides = parse_mapping(self.generator_config_overrides,
                                                            "generator_config_overrides")
        if self.discriminator_weight is not None and self.discriminator_weight <= 0:
            raise RecipeError(f"key 'discriminator_weight': must be above 0, got {self.discriminator_weight}")


@dataclass
class ElectraStepOutput(ModelOutput):
    """loss: generator loss + weight x discriminator loss (what the Trainer optimises and reports as loss);
    statistics: one row of STATISTICS per block (what evaluation aggregates, gathered across processes)."""

    loss: torch.Tensor | None = None
    statistics: torch.Tensor | None = None


class ElectraWithGenerator(ElectraForPreTraining):
    """The discriminator (an ElectraForPreTraining, so its weights keep their names) carrying a generator
    (ElectraForMaskedLM, `config.generator_config`) that shares its embeddings module (token, position and
    token-type embeddings with their LayerNorm)."""

    accepts_loss_kwargs = False  # the loss is a mean per step: the Trainer scales it for gradient accumulation

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.generator = ElectraForMaskedLM(ElectraConfig(**config.generator_config))
        self.generator.electra.embeddings = self.electra.embeddings
        # Declared per instance, before post_init ties them: the generator exists only after the parent's __init__.
        # save_pretrained then stores the shared tensors once, and from_pretrained shares them again.
        shared = [f"{name}.weight" for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")]
        self._tied_weights_keys = {f"generator.electra.embeddings.{name}": f"electra.embeddings.{name}"
                                   for name in [*shared, "LayerNorm.weight", "LayerNorm.bias"]}
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> ElectraStepOutput:
        """`input_ids` with [MASK] at the masked positions and `labels` holding their original tokens (-100
        elsewhere), as DataCollatorForLanguageModeling(mask_replace_prob=1.0) makes them."""
        if labels is None:
            raise ValueError("ElectraWithGenerator needs `labels` (the masked positions' original tokens)")
        masked = labels != -100
        scored = attention_mask.bool() if attention_mask is not None else torch.ones_like(masked)
        # The generator's vocabulary projection runs on the masked positions only (15% of the tokens).
        hidden = self.generator.electra(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
        generator_logits = self.generator.generator_lm_head(self.generator.generator_predictions(hidden[masked]))
        generator_token_loss = F.cross_entropy(generator_logits.float(), labels[masked], reduction="none")
        with torch.no_grad():  # the sample is an input of the discriminator: no gradient flows back through it
            sampled = torch.multinomial(torch.softmax(generator_logits.float(), dim=-1), 1).squeeze(-1)
            original = torch.where(masked, labels, input_ids)
            corrupted = original.masked_scatter(masked, sampled)
            replaced = corrupted != original  # a sample equal to the original counts as original, as in the paper
        logits = super().forward(input_ids=corrupted, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).logits
        discriminator_token_loss = F.binary_cross_entropy_with_logits(logits.float(), replaced.float(),
                                                                      reduction="none") * scored
        generator_loss = generator_token_loss.sum() / masked.sum().clamp(min=1)
        discriminator_loss = discriminator_token_loss.sum() / scored.sum().clamp(min=1)
        loss = generator_loss + self.config.discriminator_weight * discriminator_loss
        with torch.no_grad():
            flagged = (logits > 0) & scored
            per_token_generator_loss = torch.zeros_like(logits, dtype=torch.float32).masked_scatter(
                masked, generator_token_loss.detach())
            statistics = torch.stack([
                per_token_generator_loss.sum(-1), masked.sum(-1), discriminator_token_loss.detach().sum(-1),
                scored.sum(-1), (flagged & replaced).sum(-1), (flagged & ~replaced).sum(-1),
                (~flagged & replaced & scored).sum(-1)], dim=-1).float()
        return ElectraStepOutput(loss=loss, statistics=statistics)

    def matmul_weights_per_token(self) -> float:
        """Weights in matrix multiplies per token on average (for MFU): the generator's output layers run on the
        masked fraction of the tokens only."""
        generator = self.generator
        head = matmul_weight_count(generator.generator_predictions) + parameter_size(generator.generator_lm_head.weight)
        return matmul_weight_count(self) - (1.0 - self.config.masked_fraction) * head


def electra_metrics(prediction) -> dict:
    """The Trainer's compute_metrics: per-block STATISTICS of the whole evaluation set (all processes) summed into
    the generator's masked-token loss, the discriminator's loss and accuracy, its precision and recall on replaced
    tokens, and the accuracy of answering "original" everywhere (the baseline it has to beat)."""
    statistics = prediction.predictions
    statistics = statistics[0] if isinstance(statistics, tuple) else statistics
    total = dict(zip(STATISTICS, np.asarray(statistics, dtype=np.float64).reshape(-1, len(STATISTICS)).sum(0)))
    scored, tp, fp, fn = total["scored"], total["true_positives"], total["false_positives"], total["false_negatives"]
    replaced = tp + fn
    return {
        "generator_loss": total["generator_loss_sum"] / max(total["masked"], 1),
        "discriminator_loss": total["discriminator_loss_sum"] / max(scored, 1),
        "discriminator_accuracy": (scored - fp - fn) / max(scored, 1),
        "all_original_accuracy": (scored - replaced) / max(scored, 1),
        "replaced_fraction": replaced / max(scored, 1),
        "replaced_precision": tp / (tp + fp) if tp + fp else 0.0,
        "replaced_recall": tp / replaced if replaced else 0.0,
        "scored_tokens": int(scored),
    }


def _generator_config(config: ElectraConfig, model_args) -> ElectraConfig:
    """The generator: the discriminator's config scaled in width (hidden size, heads, feed-forward) by
    generator_size, same depth and embeddings, then generator_config_overrides."""
    size = DEFAULT_GENERATOR_SIZE if model_args.generator_size is None else model_args.generator_size
    if not 0 < size <= 1:
        raise RecipeError(f"key 'generator_size': must be above 0 and at most 1 (a fraction of the discriminator's "
                          f"hidden size), got {size}")
    overrides = dict(model_args.generator_config_overrides or {})
    values = {key: value for key, value in config.to_dict().items() if key not in (*TRAINING_ONLY, "architectures")}
    for name in overrides:
        if name not in values:
            raise RecipeError(f"key 'generator_config_overrides': an electra config has no attribute {name!r}")
        if name in ("embedding_size", "vocab_size", "max_position_embeddings", "type_vocab_size"):
            raise RecipeError(f"key 'generator_config_overrides': {name} is the discriminator's (the generator "
                              "shares its embeddings)")
    values.update(hidden_size=max(1, round(config.hidden_size * size)),
                  num_attention_heads=max(1, round(config.num_attention_heads * size)),
                  intermediate_size=max(1, round(config.intermediate_size * size)))
    values.update(overrides)
    for name in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers"):
        if not isinstance(values[name], int) or isinstance(values[name], bool) or values[name] < 1:
            raise RecipeError(f"key 'generator_config_overrides': {name} must be a positive integer, got "
                              f"{values[name]!r}")
    key = "generator_config_overrides" if {"hidden_size", "num_attention_heads"} & set(overrides) else "generator_size"
    if values["hidden_size"] > config.hidden_size:
        raise RecipeError(f"key '{key}': the generator's hidden size {values['hidden_size']} is larger than the "
                          f"discriminator's {config.hidden_size} (ELECTRA needs a smaller generator)")
    if values["hidden_size"] % values["num_attention_heads"]:
        raise RecipeError(f"key '{key}': the generator's hidden size {values['hidden_size']} is not a multiple of "
                          f"its {values['num_attention_heads']} attention heads (set "
                          "generator_config_overrides.num_attention_heads)")
    try:
        return ElectraConfig(**values)
    except (StrictDataclassError, ValueError, TypeError) as err:
        raise RecipeError(f"key 'generator_config_overrides': {first_line(err)}") from None


def build_electra(config: ElectraConfig, model_args, masked_fraction: float,
                  load_weights: str | None = None) -> ElectraWithGenerator:
    """The discriminator with its generator, from the config class (random weights); with `load_weights` (a local
    folder or Hub id) the discriminator starts from its weights, and the generator from the `generator/` subfolder
    of a local folder that has one (a run of this objective), else from random weights (a Hub id's generator is not
    fetched)."""
    settings_given = model_args.generator_size is not None or model_args.generator_config_overrides
    saved_generator = Path(load_weights, GENERATOR_FOLDER) if load_weights else None
    if saved_generator is not None and (saved_generator / "config.json").is_file() and not settings_given:
        generator = ElectraConfig.from_pretrained(saved_generator)
    else:
        generator = _generator_config(config, model_args)
    if generator.embedding_size != config.embedding_size:
        raise RecipeError(f"the generator's embedding_size {generator.embedding_size} differs from the "
                          f"discriminator's {config.embedding_size}: they share embeddings")
    config.generator_config = {k: v for k, v in generator.to_dict().items() if k not in ("architectures",)}
    config.masked_fraction = masked_fraction
    config.discriminator_weight = (DEFAULT_DISCRIMINATOR_WEIGHT if model_args.discriminator_weight is None
                                   else model_args.discriminator_weight)
    kwargs = {"attn_implementation": model_args.attn_implementation}
    if load_weights is None:
        return ElectraWithGenerator._from_config(config, **kwargs)
    model = ElectraWithGenerator.from_pretrained(load_weights, config=config, use_safetensors=True,
                                                 revision=model_args.model_revision, **kwargs)
    if saved_generator is not None and (saved_generator / "model.safetensors").is_file():
        trained = ElectraForMaskedLM.from_pretrained(saved_generator, use_safetensors=True)
        try:
            model.generator.load_state_dict(trained.state_dict())
        except RuntimeError as err:
            raise RecipeError(f"key 'model_name_or_path': {saved_generator} does not fit the generator the recipe "
                              f"builds: {first_line(err)}") from None
        logger.info("Generator loaded from %s", saved_generator)
    else:
        logger.info("Generator: new, random weights (no local %s/ folder in %s)", GENERATOR_FOLDER, load_weights)
    return model


def save_discriminator_and_generator(output_dir) -> None:
    """Turn the Trainer's final save (the training model, whole under any launcher) into what users load: the
    discriminator as a plain ElectraForPreTraining checkpoint at the top (AutoModelForSequenceClassification
    loads its body), the generator with the tokenizer in generator/ (a masked LM)."""
    out = Path(output_dir)
    model = ElectraWithGenerator.from_pretrained(out, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model.generator.save_pretrained(out / GENERATOR_FOLDER)
    tokenizer.save_pretrained(out / GENERATOR_FOLDER)
    values = {k: v for k, v in model.config.to_dict().items() if k not in (*TRAINING_ONLY, "architectures")}
    discriminator = ElectraForPreTraining(ElectraConfig(**values))
    discriminator.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("generator.")})
    discriminator.save_pretrained(out)


def _usage(repo_id: str, mask_token: str | None) -> str:
    return "\n".join([
        "from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, AutoTokenizer, pipeline",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        f'discriminator = AutoModelForPreTraining.from_pretrained("{repo_id}", use_safetensors=True)',
        'inputs = tokenizer("The ship sailed across the bread.", return_tensors="pt")',
        "flagged = discriminator(**inputs).logits[0] > 0  # True where a token looks replaced",
        'print([t for t, f in zip(tokenizer.convert_ids_to_tokens(inputs["input_ids"][0]), flagged) if f])',
        "# the generator that trained it is a masked LM:",
        f'generator = AutoModelForMaskedLM.from_pretrained("{repo_id}", subfolder="{GENERATOR_FOLDER}",',
        "                                                  use_safetensors=True)",
        'fill = pipeline("fill-mask", model=generator, tokenizer=tokenizer)',
        f'print(fill("The ship sailed across the {mask_token or "[MASK]"}."))',
    ])


class Electra(Objective):
    name = "electra"
    auto_model = AutoModelForPreTraining
    model_type_names = {"electra": "ElectraForPreTraining"}  # replaced-token detection + masked-LM heads
    heads = "replaced-token-detection (ElectraForPreTraining) and masked-LM heads"
    special_tokens = MASKED_LM.special_tokens
    tokenizer_type = MASKED_LM.tokenizer_type
    separator = MASKED_LM.separator
    wraps_blocks = True  # [CLS] ... [SEP], as the encoder it pretrains is fine-tuned
    needs_mask_token = True
    reported_metrics = (("eval_discriminator_accuracy", "replaced-token detection accuracy", ".4f"),
                        ("eval_all_original_accuracy", "all-original baseline accuracy", ".4f"),
                        ("eval_replaced_recall", "replaced tokens found (recall)", ".3f"),
                        ("eval_replaced_precision", "flagged tokens replaced (precision)", ".3f"),
                        ("generator_perplexity", "generator perplexity (masked tokens)", ".2f"))
    loss_label = "loss (generator MLM + discriminator_weight x replaced-token detection)"
    architecture_markers = ("ElectraForPreTraining",)
    pipeline_tag = "feature-extraction"  # a discriminator is fine-tuned or read for features; fill-mask: generator/
    demonstration_task = "fill-mask"  # through the generator; the discriminator has no words to show
    card_tag = "electra"
    description = ("an ELECTRA discriminator (replaced-token detection) pretrained from scratch, with its generator "
                   f"(a masked language model) in `{GENERATOR_FOLDER}/`")
    keys = ElectraKeys
    saved_folders = (GENERATOR_FOLDER,)
    compute_metrics = staticmethod(electra_metrics)

    def scored_per_block(self, block_size):
        return block_size  # the discriminator scores every token (not used: no bits/byte)

    def collator(self, tokenizer, data_args, seed, documents=False):
        # [MASK] at every selected position: the generator's samples replace them (no random or kept tokens)
        return BatchSeededMasking(tokenizer, seed, mlm_probability=data_args.mlm_probability, mask_replace_prob=1.0,
                                  random_replace_prob=0.0)

    def eval_metrics(self, metrics, bytes_per_token):
        return {"generator_perplexity": perplexity(metrics["eval_generator_loss"])}

    def usage(self, repo_id, mask_token):
        return _usage(repo_id, mask_token)

    def demonstration_folder(self, run_dir):
        return Path(run_dir) / GENERATOR_FOLDER

    def check_arguments(self, config, model_args):
        _generator_config(config, model_args)

    def build_model(self, config, model_args, masked_fraction, source):
        return build_electra(config, model_args, masked_fraction, source)

    def finalize_saved(self, output_dir):
        save_discriminator_and_generator(output_dir)


ELECTRA = Electra()
