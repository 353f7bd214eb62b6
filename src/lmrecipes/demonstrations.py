"""What a pretrained model learnt, in words: the objective's transformers pipeline (text-generation or fill-mask) on a
few prompts, with the pretrained weights and with random weights of the same architecture (the model before
pretraining), side by side. Greedy decoding and a seeded initialisation: the same run shows the same words."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, pipeline

from .errors import RecipeError
from .objectives import Objective

TASK_MODELS = {"text-generation": AutoModelForCausalLM, "fill-mask": AutoModelForMaskedLM}
NEW_TOKENS = 16  # greedy continuation length (text-generation)
TOP_K = 5  # predictions shown per mask (fill-mask)
RANDOM_WEIGHTS_SEED = 0


def _fitted(prompt: str, tokenizer, model_input, limit: int | None) -> str:
    """The prompt, its first words dropped until what the pipeline reads (`model_input(prompt)`, special tokens
    included) fits `limit` tokens; a RecipeError when even its last word does not."""
    words = prompt.split(" ")
    while limit is not None and len(tokenizer(model_input(" ".join(words)), verbose=False)["input_ids"]) > limit:
        if len(words) == 1:
            raise RecipeError(f"key 'demonstration_prompts': {prompt[:40]!r}... does not fit the model's "
                              f"{limit} positions, even cut to its last word")
        words = words[max(1, len(words) // 10):]
    return " ".join(words)


def _shown(task_pipeline, task: str, prompt: str) -> str:
    if task == "text-generation":
        out = task_pipeline(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, return_full_text=False)
        return " ".join(out[0]["generated_text"].split())
    filled = task_pipeline(f"{prompt} {task_pipeline.tokenizer.mask_token}.", top_k=TOP_K)
    return ", ".join(candidate["token_str"].strip() or repr(candidate["token_str"]) for candidate in filled)


def demonstrate(run_dir: str | Path, objective: Objective, prompts: list[str]) -> dict:
    """{"task", "how", "folder", "rows": [{"prompt", "random_weights", "pretrained"}]} for a finished pretraining
    run (on the first GPU when there is one). A prompt longer than the model's positions allow is cut to its end."""
    folder = Path(objective.demonstration_folder(Path(run_dir)))
    if not (folder / "config.json").is_file():
        raise RecipeError(f"{folder}: no saved model to show (config.json missing): is the run whole?")
    task = objective.demonstration_task
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    for prompt in prompts:
        if task == "fill-mask" and tokenizer.mask_token in prompt:
            raise RecipeError(f"key 'demonstration_prompts': {prompt!r} holds the mask token "
                              f"{tokenizer.mask_token}; the mask goes after each prompt by itself")
    positions = getattr(config, "max_position_embeddings", None)
    # 2 spare positions: RoBERTa-like models start counting positions at 2
    limit = None if positions is None else positions - 2 - (NEW_TOKENS if task == "text-generation" else 0)
    model_input = (lambda text: text) if task == "text-generation" else (
        lambda text: f"{text} {tokenizer.mask_token}.")
    with torch.random.fork_rng(devices=[]):  # the caller's random state is kept (the model is built on the CPU)
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        untrained = TASK_MODELS[task].from_config(config)
    models = {"random_weights": untrained, "pretrained": TASK_MODELS[task].from_pretrained(folder)}
    pad = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    for model in models.values():
        if task == "text-generation":
            model.generation_config.pad_token_id = pad  # else generate() warns on every prompt
    device = 0 if torch.cuda.is_available() else "cpu"
    pipes = {name: pipeline(task, model=model.eval(), tokenizer=tokenizer, device=device)
             for name, model in models.items()}
    fitted = {prompt: _fitted(prompt, tokenizer, model_input, limit) for prompt in prompts}
    rows = [{"prompt": prompt, **{name: _shown(pipe, task, fitted[prompt]) for name, pipe in pipes.items()}}
            for prompt in prompts]
    how = (f"greedy continuation, {NEW_TOKENS} new tokens" if task == "text-generation" else
           f"top {TOP_K} fill-mask predictions for a mask after the prompt (prompt {tokenizer.mask_token}.)")
    return {"task": task, "how": how, "folder": str(folder), "rows": rows}


def demonstrations_markdown(shown: dict) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ") or "(nothing: the text ends at once)"

    lines = ["## What pretraining taught the model", "",
             f"The same prompts through the `{shown['task']}` pipeline ({shown['how']}), with random weights of the "
             "same architecture (before pretraining) and with the pretrained weights.", "",
             "| prompt | before pretraining | after pretraining |", "| --- | --- | --- |"]
    lines += [f"| {cell(row['prompt'])} | {cell(row['random_weights'])} | {cell(row['pretrained'])} |"
              for row in shown["rows"]]
    return lines
