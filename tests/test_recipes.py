"""Recipes: every shipped recipe parses and validates; flags override YAML; bad keys and values fail in one line."""

import glob
import re
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from conftest import REPO
from lmrecipes import load_recipe
from lmrecipes.arguments import FINETUNE_ARGUMENTS, PRETRAIN_ARGUMENTS, PipelineArguments
from lmrecipes.data.sources import resolve_data_files
from lmrecipes.modeling import build_config, check_model_arguments, infer_objective
from lmrecipes.recipe import parse_recipe, read_run_recipe, write_recipe

PRETRAIN_RECIPES = sorted(glob.glob(str(REPO / "recipes" / "*" / "pretrain*.yaml")))
FINETUNE_RECIPES = sorted(glob.glob(str(REPO / "recipes" / "*" / "finetune-*.yaml")))
PIPELINE_RECIPES = sorted(glob.glob(str(REPO / "recipes" / "*" / "pipeline.yaml")))


def test_every_recipe_is_covered_by_a_parsing_test():
    every = set(glob.glob(str(REPO / "recipes" / "**" / "*.yaml"), recursive=True))
    assert every == set(PRETRAIN_RECIPES) | set(FINETUNE_RECIPES) | set(PIPELINE_RECIPES)


def test_the_promised_recipes_exist():
    names = {str(Path(p).relative_to(REPO)) for p in PRETRAIN_RECIPES}
    assert {"recipes/tiny-llama/pretrain.yaml", "recipes/tiny-bert/pretrain.yaml",
            "recipes/llama-125m/pretrain.yaml", "recipes/bert-base/pretrain.yaml"} <= names


@pytest.mark.parametrize("path", PRETRAIN_RECIPES, ids=lambda p: str(Path(p).relative_to(REPO)))
def test_every_pretrain_recipe_parses_and_validates(path):
    # GPU recipes ask for bf16, which TrainingArguments refuses on a machine without a GPU unless use_cpu is set
    on_cpu = {} if torch.cuda.is_available() else {"use_cpu": True}
    model_args, tokenizer_args, data_args, training_args, explicit = load_recipe(path, PRETRAIN_ARGUMENTS, **on_cpu)
    assert set(yaml.safe_load(Path(path).read_text())) <= set(explicit)
    config = build_config(model_args)
    objective = infer_objective(config, model_args.objective)
    assert objective.name == model_args.objective
    check_model_arguments(config, objective, model_args)  # e.g. the ELECTRA generator's size
    if data_args.train_file:
        assert resolve_data_files(data_args.train_file, "train_file")
    assert training_args.output_dir.startswith("runs/")
    assert Path(path).read_text().startswith("#"), "recipes open with a comment header"


def test_a_flag_overrides_the_yaml_value():
    path = REPO / "recipes" / "tiny-llama" / "pretrain.yaml"
    assert yaml.safe_load(path.read_text())["learning_rate"] != 0.01
    *_, training_args, explicit = load_recipe(path, PRETRAIN_ARGUMENTS, learning_rate=0.01, max_steps=7)
    assert training_args.learning_rate == 0.01 and training_args.max_steps == 7
    assert explicit["learning_rate"] == 0.01


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "accelerate_configs" / "*.yaml"))),
                         ids=lambda p: Path(p).name)
def test_accelerate_configs_load(path):
    config = load_config_from_file(path)
    assert config.num_processes >= 1


def test_config_overrides_go_through_the_config_constructor():
    model_args, *_ = load_recipe({"model_type": "llama", "config_overrides": {"hidden_size": 64,
                                  "num_attention_heads": 4, "num_hidden_layers": 2}}, PRETRAIN_ARGUMENTS)
    config = build_config(model_args)
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim) == (64, 2, 16)


@pytest.mark.parametrize("path", FINETUNE_RECIPES, ids=lambda p: str(Path(p).relative_to(REPO)))
def test_every_finetune_recipe_parses_and_validates(path):
    model_args, tokenizer_args, data_args, finetune_args, training_args, explicit = load_recipe(
        path, FINETUNE_ARGUMENTS)
    assert set(yaml.safe_load(Path(path).read_text())) <= set(explicit)
    assert model_args.model_name_or_path and resolve_data_files(data_args.train_file, "train_file")
    assert finetune_args.use_lora == path.endswith("-lora.yaml")
    assert training_args.output_dir.startswith("runs/")
    if model_args.model_name_or_path.startswith("runs/"):  # made by the matching pretraining recipe
        pretrain_recipe = Path(path).parent / "pretrain.yaml"
        assert yaml.safe_load(pretrain_recipe.read_text())["output_dir"] == model_args.model_name_or_path


@pytest.mark.parametrize("path", PIPELINE_RECIPES, ids=lambda p: str(Path(p).relative_to(REPO)))
def test_every_pipeline_recipe_parses_and_names_existing_recipes(path):
    args, _ = load_recipe(path, [PipelineArguments])
    assert Path(args.pretrain_recipe).is_file() and Path(args.finetune_recipe).is_file()
    load_recipe(args.pretrain_recipe, PRETRAIN_ARGUMENTS, **args.pretrain_overrides)
    load_recipe(args.finetune_recipe, FINETUNE_ARGUMENTS, **args.finetune_overrides)


def test_mapping_keys_merge_into_the_recipe_from_flags_and_keywords(capsys, tmp_path):
    """`--config_overrides '{"num_hidden_layers": 2}'` changes one attribute; the rest of the recipe's mapping stays."""
    path = REPO / "recipes" / "tiny-llama" / "pretrain.yaml"
    shipped = yaml.safe_load(path.read_text())["config_overrides"]
    parsed = {}
    parsed["flag"] = parse_recipe(PRETRAIN_ARGUMENTS, [str(path), "--config_overrides", '{"num_hidden_layers": 2}'])
    parsed["flag="] = parse_recipe(PRETRAIN_ARGUMENTS, [str(path), "--config_overrides=num_hidden_layers=2"])
    parsed["keyword"] = load_recipe(path, PRETRAIN_ARGUMENTS, config_overrides={"num_hidden_layers": 2})
    parsed["dict"] = load_recipe(yaml.safe_load(path.read_text()), PRETRAIN_ARGUMENTS,
                                 config_overrides={"num_hidden_layers": 2})
    for how, (model_args, *_, explicit) in parsed.items():
        assert model_args.config_overrides == {**shipped, "num_hidden_layers": 2}, how
        assert explicit["config_overrides"] == model_args.config_overrides, how  # recorded as it ran
        config = build_config(model_args)
        assert (config.hidden_size, config.num_hidden_layers) == (shipped["hidden_size"], 2), how
    model_args, *_ = parse_recipe(PRETRAIN_ARGUMENTS, [str(path), "--config_overrides",
                                                       '{"__replace__": true, "num_hidden_layers": 2}'])
    assert model_args.config_overrides == {"num_hidden_layers": 2}  # replacing is explicit
    _, tokenizer_args, *_ = load_recipe({"model_type": "llama", "special_tokens": {"bos_token": "<s>",
                                         "eos_token": "</s>"}}, PRETRAIN_ARGUMENTS, special_tokens={"eos_token": "<e>"})
    assert tokenizer_args.special_tokens == {"bos_token": "<s>", "eos_token": "<e>"}

    pipeline_recipe = tmp_path / "pipeline.yaml"  # pipeline overrides: nested mappings merge too
    pipeline_recipe.write_text(yaml.safe_dump({
        "pretrain_recipe": str(path), "finetune_recipe": str(REPO / "recipes/tiny-llama/finetune-sentiment.yaml"),
        "output_dir": str(tmp_path / "run"),
        "pretrain_overrides": {"max_steps": 5, "config_overrides": {"hidden_size": 64}}}))
    args, explicit = parse_recipe([PipelineArguments], [str(pipeline_recipe), "--pretrain_overrides",
                                                        '{"config_overrides": {"num_hidden_layers": 1}}'])
    assert args.pretrain_overrides == {"max_steps": 5, "config_overrides": {"hidden_size": 64, "num_hidden_layers": 1}}
    model_args, *_ = load_recipe(args.pretrain_recipe, PRETRAIN_ARGUMENTS, **args.pretrain_overrides)
    assert model_args.config_overrides == {**shipped, "hidden_size": 64, "num_hidden_layers": 1}


def test_yaml_1_1_booleans_stay_strings_where_the_key_takes_strings(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# a user's recipe\nmodel_type: llama\neval_strategy: no\nsave_strategy: no\nuse_cpu: yes\n"
                      "hub_model_id: off\nbf16: false\n")
    *_, training_args, explicit = load_recipe(recipe, PRETRAIN_ARGUMENTS)
    assert training_args.eval_strategy == "no" and training_args.save_strategy == "no"
    assert training_args.use_cpu is True and training_args.bf16 is False and training_args.hub_model_id == "off"
    *_, training_args, _ = parse_recipe(PRETRAIN_ARGUMENTS, [str(recipe), "--use_cpu", "off", "--disable_tqdm=on"])
    assert training_args.use_cpu is False and training_args.disable_tqdm is True  # the same spellings as flags
    written = tmp_path / "recipe.yaml"  # the resolved recipe reads back as the same values
    write_recipe(written, explicit)
    assert read_run_recipe(tmp_path) == explicit and yaml.safe_load(written.read_text())["eval_strategy"] == "no"


def test_each_objective_lives_in_its_own_module_and_nowhere_else():
    """Pretraining, data, tokenizer, model and hub code are handed an Objective and ask it; none names an objective
    (at any depth of the package: tests/test_architecture.py)."""
    from lmrecipes.objectives import OBJECTIVES, Objective

    assert set(OBJECTIVES) == {"causal_lm", "masked_lm", "electra"}
    for name, objective in OBJECTIVES.items():
        assert isinstance(objective, Objective) and objective.name == name
        assert (REPO / "src" / "lmrecipes" / "objectives" / f"{name}.py").is_file()
    assert OBJECTIVES["causal_lm"].scored_per_block(256) == 255 and OBJECTIVES["masked_lm"].scored_per_block(128) == 126
    # no bits per byte for a masked LM; perplexity of the masked tokens
    assert OBJECTIVES["masked_lm"].eval_metrics({"eval_loss": 2.0}, 4.0) == {"perplexity": pytest.approx(7.389056)}
    causal = OBJECTIVES["causal_lm"].eval_metrics({"eval_loss": 2.0}, 4.0)
    assert causal["bits_per_byte"] == pytest.approx(2.0 / (0.6931472 * 4.0))
    # ELECTRA's loss mixes two losses: the perplexity is the generator's, of its masked-token loss
    assert OBJECTIVES["electra"].eval_metrics({"eval_loss": 30.0, "eval_generator_loss": 2.0}, 4.0) == {
        "generator_perplexity": pytest.approx(7.389056)}
    elsewhere = [f"{path.relative_to(REPO)}:{number}" for path in (REPO / "src" / "lmrecipes").glob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"[\"'](causal_lm|masked_lm|electra)[\"']", line)]  # a name as a value, not in help
    assert not elsewhere, f"objective-specific code outside src/lmrecipes/objectives/: {elsewhere}"


@pytest.mark.parametrize("script, keys", [
    ("pretrain.py", ["--objective", "--block_size", "--learning_rate"]),
    ("finetune.py", ["--problem_type", "--label_columns", "--long_text", "--stride", "--class_weights",
                     "--head_learning_rate", "--lora_use_rslora", "--early_stopping_patience"]),
])
def test_help_lists_every_key(capsys, script, keys):
    """--help prints the documentation of every key (argparse formats help texts with %: a bare % broke it)."""
    from importlib import util

    spec = util.spec_from_file_location(script.removesuffix(".py"), REPO / "scripts" / script)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and all(key in out for key in keys), out[-1000:]
