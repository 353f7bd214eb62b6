"""The Python API for notebooks; the scripts call the same functions. Recipes as files or dicts, keyword overrides.

    import lmrecipes
    tokenizer = lmrecipes.train_tokenizer("recipes/tiny-llama/pretrain.yaml", vocab_size=2000)
    lmrecipes.tokenize_corpus("recipes/tiny-llama/pretrain.yaml", token_shards_dir="shards/tiny")  # large corpora
    model = lmrecipes.build_model("recipes/tiny-llama/pretrain.yaml", tokenizer=tokenizer)
    results = lmrecipes.pretrain("recipes/tiny-llama/pretrain.yaml", max_steps=50, output_dir="runs/nb")
    lmrecipes.finetune("recipes/tiny-llama/finetune-sentiment.yaml", model_name_or_path="runs/nb", ...)
    lmrecipes.demonstrate("runs/nb", ["It was a dark and stormy"])  # what it learnt: before / after pretraining
    lmrecipes.predict("runs/nb-sentiment", ["A gem of a film."])
    lmrecipes.publish("runs/nb", "USER/NAME", dry_run=True)
    lmrecipes.end_launched_process()    # the last line of a script of yours under `accelerate launch`
"""

from __future__ import annotations

from pathlib import Path

from .recipe import load_recipe

# The heavy modules (torch, datasets, models) are imported by each function on first use, so that `import lmrecipes`
# stays quick in a notebook.


def train_tokenizer(recipe: str | Path | dict | None = None, *, save_dir: str | Path | None = None, **overrides):
    """The tokenizer a pretraining recipe describes: loaded, or trained on its corpus (cached). Saved if save_dir."""
    from .arguments import PRETRAIN_ARGUMENTS
    from .pretraining import recipe_tokenizer

    model_args, tokenizer_args, data_args, _, _ = load_recipe(recipe, PRETRAIN_ARGUMENTS, **overrides)
    _, tokenizer = recipe_tokenizer(model_args, tokenizer_args, data_args)
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def tokenize_corpus(recipe: str | Path | dict | None = None, **overrides) -> dict:
    """Write the training split of a pretraining recipe's corpus as token shards to its `token_shards_dir` (a
    keyword or a recipe key), once; runs given the same token_shards_dir train on them. Returns their index."""
    from .arguments import PRETRAIN_ARGUMENTS
    from .pretraining import tokenize_corpus as write

    model_args, tokenizer_args, data_args, _, _ = load_recipe(recipe, PRETRAIN_ARGUMENTS, **overrides)
    return write(model_args, tokenizer_args, data_args)


def build_model(recipe: str | Path | dict | None = None, *, tokenizer=None, **overrides):
    """The recipe's language model from its config class (random weights), sized to `tokenizer` when given, else to
    the recipe's: the tokenizer it names (tokenizer_name_or_path), or the `vocab_size` of the one it trains
    (pretraining sizes the model to the trained tokenizer itself, special-token ids included)."""
    from .arguments import PRETRAIN_ARGUMENTS
    from .modeling import config_and_objective, pretraining_model
    from .tokenizer import load_tokenizer

    model_args, tokenizer_args, data_args, _, _ = load_recipe(recipe, PRETRAIN_ARGUMENTS, **overrides)
    config, objective = config_and_objective(model_args)
    if tokenizer is None and tokenizer_args.tokenizer_name_or_path:
        tokenizer = load_tokenizer(tokenizer_args.tokenizer_name_or_path, key="tokenizer_name_or_path",
                                   trust_remote_code=model_args.trust_remote_code)
    if tokenizer is None and "vocab_size" not in model_args.config_overrides:
        config.get_text_config().vocab_size = tokenizer_args.vocab_size
    return pretraining_model(config, objective, model_args, data_args, tokenizer)


def pretrain(recipe: str | Path | dict | None = None, *, callbacks=(), **overrides) -> dict:
    """Pretrain from a recipe; keyword arguments override recipe keys. Returns the run's results."""
    from .arguments import PRETRAIN_ARGUMENTS
    from .pretraining import run_pretraining

    *args, explicit = load_recipe(recipe, PRETRAIN_ARGUMENTS, **overrides)
    return _unlocking(run_pretraining, args, explicit=explicit, callbacks=callbacks)


def finetune(recipe: str | Path | dict | None = None, *, callbacks=(), **overrides) -> dict:
    """Fine-tune a classifier from a recipe; keyword arguments override recipe keys. Returns the run's results."""
    from .arguments import FINETUNE_ARGUMENTS
    from .finetuning import run_finetuning

    *args, explicit = load_recipe(recipe, FINETUNE_ARGUMENTS, **overrides)
    return _unlocking(run_finetuning, args, explicit=explicit, callbacks=callbacks)


def _unlocking(job, args, **kwargs):
    """`job(*args, **kwargs)`, then this process's lock on the run's output_dir given up however the job ended: a
    notebook that goes on after an error does not keep other processes out of the folder."""
    from transformers import TrainingArguments

    from .run_lock import unlock_run_folder

    try:
        return job(*args, **kwargs)
    finally:
        unlock_run_folder(Path(next(a for a in args if isinstance(a, TrainingArguments)).output_dir))


def demonstrate(run_dir: str | Path, prompts: list[str] | None = None) -> dict:
    """What a finished pretraining run learnt: its objective's pipeline (text-generation: greedy continuation;
    fill-mask: the top predictions for a mask after the prompt) on each prompt, with random weights of the same
    architecture and with the pretrained ones: {"task", "how", "folder", "rows": [{prompt, random_weights,
    pretrained}]}. Default prompts: the pipeline's (arguments.pipeline.DEMONSTRATION_PROMPTS)."""
    from .arguments.pipeline import DEMONSTRATION_PROMPTS
    from .demonstrations import demonstrate as show
    from .errors import RecipeError
    from .objectives import get_objective
    from .recipe import read_run_recipe
    from .run_folder import is_run_folder, run_record

    folder = Path(run_dir)
    name = read_run_recipe(folder).get("objective") if folder.is_dir() else None
    if name is None or not is_run_folder(folder) or run_record(folder).get("finished") is not True:
        raise RecipeError(f"{run_dir}: not a finished pretraining run of lmrecipes (a run folder whose recipe.yaml "
                          "names its objective, and whose final model is saved)")
    if isinstance(prompts, str):
        raise RecipeError(f"demonstrate(prompts): a list of texts, got {prompts!r}")
    prompts = list(DEMONSTRATION_PROMPTS if prompts is None else prompts)
    if not all(isinstance(prompt, str) for prompt in prompts):
        raise RecipeError(f"demonstrate(prompts): a list of texts, got {prompts!r}")
    return show(run_dir, get_objective(name), prompts)


def predict(model_dir: str | Path, texts: list, *, batch_size: int = 32, max_length: int | None = None):
    """Classify texts (strings, or {"text", "text_pair"} dicts for pair tasks) with a fine-tuned run folder (plain
    or LoRA): [{text, label, score}]."""
    from .prediction import predict as predict_texts

    return predict_texts(model_dir, texts, batch_size=batch_size, max_length=max_length)


def publish(model_dir: str | Path, repo_id: str | None = None, *, dry_run: bool = False, **options) -> dict:
    """Write a run's Hub-ready folder (model card, safetensors) and upload it; dry_run only lists it.

    Options: private, publish_dir, lora_as ('auto' | 'adapter' | 'merged'), base_model, license, language, datasets,
    commit_message, token (default HF_TOKEN or the saved login; never written anywhere).
    """
    from .hub import publish as publish_run

    return publish_run(model_dir, repo_id, dry_run=dry_run, **options)


def end_launched_process(code: int = 0) -> None:
    """The last line of a script of yours run under `accelerate launch` with several processes: closes the process
    group, runs Python's exit handlers and exits with `code`, skipping the interpreter's teardown. There a process
    group that DDP still holds is torn down with its gloo threads running, which now and then aborts a finished run
    (`terminate called without an active exception`, exit -6); the scripts end this way. In a single process it
    does nothing (a notebook goes on). Files of yours still open are not flushed by it: close them first (a `with`
    block)."""
    from .launch import close_process_group, launched_processes
    from .launch import end_launched_process as end_now

    if not isinstance(code, int):
        raise TypeError(f"end_launched_process(code): an exit code (int), got {code!r}")
    if launched_processes() <= 1:
        return
    close_process_group()
    end_now(code)
