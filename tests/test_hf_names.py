"""A user with run_classification.py / run_clm.py habits: their flag names are read as lmrecipes' keys (and recorded
so), every unknown key is named at once, --help shows the script's own keys, and their own data's quirks (float
labels, .txt files, no test split) get what they mean or a one-line answer. Parsing and loading only: no training."""


import pytest

from conftest import REPO, run_finetune_script, write_csv
from lmrecipes.arguments import FINETUNE_ARGUMENTS, PRETRAIN_ARGUMENTS
from lmrecipes.data.classification import load_classification_data
from lmrecipes.data.packing import load_corpus
from lmrecipes.errors import RecipeError
from lmrecipes.recipe import load_recipe, parse_recipe, resolved_recipe

MINILM = str(REPO / "recipes/minilm/finetune-sentiment.yaml")


def test_hugging_face_flag_names_are_read_as_lmrecipes_keys_and_recorded_under_them():
    flags = ["--text_column_names", "body", "--label_column_name", "category", "--max_seq_length", "256",
             "--evaluation_strategy", "steps", "--warmup_ratio", "0.1", "--group_by_length", "--do_train",
             "--do_eval", "--metric_name", "f1", "--shuffle_train_dataset", "--validation_split_percentage", "20"]
    model, tokenizer, data, finetune, training, explicit = parse_recipe(FINETUNE_ARGUMENTS, [MINILM, *flags])
    assert (data.text_column, data.label_column, data.max_length, data.validation_fraction) == \
        ("body", "category", 256, 0.2)
    assert (training.eval_strategy.value, training.warmup_steps, training.train_sampling_strategy) == \
        ("steps", 0.1, "group_by_length")
    recipe = resolved_recipe(explicit, model, tokenizer, data, finetune, left_out=FINETUNE_ARGUMENTS.left_out)
    assert {"text_column": "body", "label_column": "category", "max_length": 256, "warmup_steps": 0.1}.items() <= \
        recipe.items()
    hf_names = {"text_column_names", "label_column_name", "max_seq_length", "warmup_ratio", "do_train", "metric_name"}
    assert not hf_names & set(recipe), "recipe.yaml records lmrecipes' keys, which parse again"
    # fine-tuning's recipe.yaml holds no pretraining key (was: vocab_size: 8192 beside a 4,096-token tokenizer)
    assert not {"vocab_size", "tokenizer_type", "generator_size", "fused_loss", "objective"} & set(recipe)

    # the same names in a recipe file; a pair of text columns; run_classification.py's do_regression
    *_, explicit = load_recipe({"text_column_names": "question", "do_regression": True, "do_predict": False},
                               FINETUNE_ARGUMENTS)
    assert (explicit["text_column"], explicit["problem_type"], explicit["test_fraction"]) == \
        ("question", "regression", 0.0)
    # false means false: over a recipe's own settings
    *_, explicit = parse_recipe(FINETUNE_ARGUMENTS, [MINILM, "--group_by_length", "false", "--shuffle_train_dataset",
                                                     "false", "--do_regression", "false"])
    assert (explicit["train_sampling_strategy"], explicit["problem_type"]) == ("random", "single_label_classification")

    # a fine-tuning recipe.yaml written before fine-tuning left pretraining keys out still runs
    *_, explicit = load_recipe({"vocab_size": 8192, "objective": None, "tokenizer_type": None, "lowercase": False},
                               FINETUNE_ARGUMENTS)
    assert not {"vocab_size", "objective", "lowercase"} & set(explicit)


@pytest.mark.parametrize("flags, expected", [
    (["--foo", "1", "--text_column_name", "x", "--vocab_size", "5", "--pad_to_max_length"],
     "command line: 4 unknown keys: '--foo'; '--text_column_name' (did you mean 'text_column_names'?); "
     "'--pad_to_max_length' (each batch is padded to its longest row (DataCollatorWithPadding)); '--vocab_size' "
     "(a key of tokenizer training; fine-tuning uses the checkpoint's tokenizer (or tokenizer_name_or_path))"),
    (["--do_train", "false"], "key 'do_train': every run trains; to score a trained model on a file use "
                              "scripts/predict.py MODEL FILE --label_column COLUMN"),
    (["--do_eval", "no"], "key 'do_eval': every run evaluates its validation split at the end"),
    (["--metric_name", "bleu"], "key 'metric_name': every run computes all of its problem type's metrics"),
    (["--text_column_names", "a,b"], "key 'text_column_names': lmrecipes reads one text column (text_column); two "
                                     "columns are a pair (text_column, text_pair_column: encoded as a pair, not "
                                     "joined), got 'a,b'"),
    (["--max_seq_length", "64", "--max_length", "32"], "key 'max_seq_length' (the name in run_classification.py for "
                                                       "max_length) and 'max_length' are both given; give one"),
    (["--objective", "clm", "--no_lowercase"], "command line: 2 unknown keys: '--objective' (a pretraining key; "
                                               "fine-tuning trains a classifier); '--lowercase' (a key of tokenizer"),
    (["--warmup_ratio", "3"], "key 'warmup_ratio': a fraction of the steps in [0, 1), got '3'"),
])
def test_unknown_keys_are_named_at_once_and_refused_names_say_what_happens_instead(capsys, tmp_path, flags,
                                                                                  expected):
    code, err = run_finetune_script(capsys, MINILM, "--output_dir", tmp_path / "out", *flags)
    assert code == 2 and err.startswith(f"error: {expected}") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_recipe_file_with_unknown_keys_names_them_all(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("model_type: llama\nlearnin_rate: 0.1\nblok_size: 64\n")
    with pytest.raises(RecipeError, match=r"mine.yaml: 2 unknown keys: 'learnin_rate' \(did you mean "
                                          r"'learning_rate'\?\); 'blok_size' \(did you mean 'block_size'\?\)"):
        parse_recipe(PRETRAIN_ARGUMENTS, [str(recipe)])
    # a fine-tuning name in pretraining: said so, not "did you mean" itself
    with pytest.raises(RecipeError, match=r"'--max_seq_length' \(a name in run_classification.py, for a key this "
                                          r"script does not have\); '--label_column' \(a fine-tuning key\)"):
        parse_recipe(PRETRAIN_ARGUMENTS, [str(REPO / "recipes/tiny-llama/pretrain.yaml"), "--max_seq_length", "64",
                                          "--label_column", "x"])


def test_help_shows_the_scripts_own_keys_grouped_and_help_all_everything(capsys):
    from importlib import util

    def help_of(script, flag="--help"):
        spec = util.spec_from_file_location(f"{script}_help", REPO / "scripts" / script)
        module = util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with pytest.raises(SystemExit) as stop:
            module.main([flag])
        assert stop.value.code == 0
        return capsys.readouterr().out

    finetune, pretrain = help_of("finetune.py"), help_of("pretrain.py")
    assert len(finetune.splitlines()) < 260, "was 891 lines"
    for key in ("--label_column ", "--long_text ", "--use_lora ", "--learning_rate ", "--bf16 ", "run_classification.py"):
        assert key in finetune
    for key in ("--vocab_size", "--generator_size", "--fused_loss", "--objective", "--adam_beta2"):
        assert key not in finetune, key
    assert "--vocab_size " in pretrain and "--generator_size " in pretrain and "--line_by_line " in pretrain
    assert "--label_column " not in pretrain
    assert "--adam_beta2" in help_of("finetune.py", "--help_all")


def test_float_labels_under_classification_point_to_regression_and_test_fraction_0_holds_out_no_test(tmp_path):
    scored = str(write_csv(tmp_path / "tweets.csv", ["tweet", "score"],
                  [[f"tweet number {i} about things", round(i * 0.37 % 5, 2)] for i in range(60)]))
    _, _, data, finetune, _, _ = load_recipe(MINILM, FINETUNE_ARGUMENTS, train_file=[scored], text_column="tweet",
                                             label_column="score")
    with pytest.raises(RecipeError) as err:
        load_classification_data(data, finetune.problem_type, finetune)
    assert "problem_type: regression" in str(err.value) and len(str(err.value)) < 300, str(err.value)

    _, _, data, finetune, _, _ = load_recipe(MINILM, FINETUNE_ARGUMENTS, train_file=[scored], text_column="tweet",
                                             label_column="score", problem_type="regression", test_fraction=0.0)
    splits, _ = load_classification_data(data, finetune.problem_type, finetune)
    assert set(splits) == {"train", "validation"} and len(splits["train"]) + len(splits["validation"]) == 60


def test_a_text_file_is_one_document_unless_line_by_line(tmp_path):
    for i in range(3):
        (tmp_path / f"notes-{i}.txt").write_text("".join(f"line {j} of file {i}\n" for j in range(40)) + "\n\n")
    files = [str(tmp_path / "*.txt")]
    _, _, data, _, _ = load_recipe(REPO / "recipes/tiny-llama/pretrain.yaml", PRETRAIN_ARGUMENTS, train_file=files)
    with pytest.raises(RecipeError, match=r"0.05 of 3 rows leaves the validation split empty.*line_by_line: true reads one per line"):
        load_corpus(data)
    _, _, data, _, _ = load_recipe(REPO / "recipes/tiny-llama/pretrain.yaml", PRETRAIN_ARGUMENTS, train_file=files,
                                   line_by_line=True)
    raw, fingerprint = load_corpus(data)
    assert len(raw["train"]) + len(raw["validation"]) == 120, "one document per line, blank lines skipped"


def test_aliases_through_the_api_replace_the_recipes_keys_and_a_repeated_alias_is_named(tmp_path):
    # an override's alias replaces the file's key, as a flag does (was: "both given" for every shipped recipe)
    _, _, data, finetune, training, explicit = load_recipe(MINILM, FINETUNE_ARGUMENTS, label_column_name="category",
                                                           max_seq_length=32, evaluation_strategy="no",
                                                           do_predict=False)
    assert (data.label_column, data.max_length, training.eval_strategy.value, data.test_fraction, data.test_file) == \
        ("category", 32, "no", 0.0, None)
    with pytest.raises(RecipeError, match="key 'do_predict' .* and 'test_file' are both given"):
        parse_recipe(FINETUNE_ARGUMENTS, [MINILM, "--do_predict", "false", "--test_file", "t.csv"])
    with pytest.raises(RecipeError, match="command-line key '--label_column_name' is given twice"):
        parse_recipe(FINETUNE_ARGUMENTS, [MINILM, "--label_column_name", "a", "--label_column_name", "a"])


def test_labels_read_back_from_a_file_as_training_read_them():
    from lmrecipes.tasks import MultiLabelClassification, SingleLabelClassification

    task = SingleLabelClassification(["0", "1", "2"], "score")  # trained on a csv column of 0.0 / 1.0 / 2.0
    assert task.file_targets(["2.0", "0", 1.0], ["f line 2", "f line 3", "f line 4"], "score") == [2, 0, 1]
    columns = MultiLabelClassification(["toxic", "obscene"], ["toxic", "obscene"], True, 0.5)
    with pytest.raises(RecipeError, match="one 0/1 column per label \\(toxic, obscene\\)"):
        columns.file_targets(["1"], ["f line 2"], "toxic")
