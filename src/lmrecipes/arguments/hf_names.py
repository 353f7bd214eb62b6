"""The names Hugging Face's example scripts (run_classification.py, run_clm.py, run_mlm.py) and transformers 4's
TrainingArguments give to what lmrecipes has under another key. A user with those habits types them; each is read as
lmrecipes' key where the meaning is the same (and recorded under that key in the run's recipe.yaml), and refused in
one line that says what lmrecipes does instead where it is not."""

from __future__ import annotations

from ..errors import RecipeError
from ..recipe_names import Alias
from ..tasks import TASKS

CLASSIFICATION = "run_classification.py"
CLM = "run_clm.py"
TRANSFORMERS_4 = "transformers 4's TrainingArguments"
EXAMPLES = "the example scripts"


def _number(name: str, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RecipeError(f"key '{name}': expected a number, got {value!r}") from None


def _warmup_ratio(value) -> dict:
    ratio = _number("warmup_ratio", value)
    if not 0 <= ratio < 1:
        raise RecipeError(f"key 'warmup_ratio': a fraction of the steps in [0, 1), got {value!r}")
    return {"warmup_steps": ratio}  # transformers 5: a warmup_steps below 1 is a ratio of the total steps


def _text_column_names(value) -> dict:
    names = [name.strip() for name in (value if isinstance(value, list) else str(value).split(",")) if name.strip()]
    if len(names) != 1:
        raise RecipeError(f"key 'text_column_names': lmrecipes reads one text column (text_column); two columns are "
                          f"a pair (text_column, text_pair_column: encoded as a pair, not joined), got {value!r}")
    return {"text_column": names[0]}


def _metric_name(value) -> dict:
    computed = sorted({name for task in TASKS.values() for name in task.metric_names if name != "loss"})
    if value not in computed:
        raise RecipeError(f"key 'metric_name': every run computes all of its problem type's metrics "
                          f"({', '.join(computed)}); {value!r} is not one of them")
    return {}  # computed anyway; metric_for_best_model chooses checkpoints


def _validation_percentage(value) -> dict:
    percent = _number("validation_split_percentage", value)
    return {"validation_fraction": percent / 100}


def _group_by_length(value) -> dict:
    return {"train_sampling_strategy": "group_by_length" if value else "random"}


def _problem_type(value) -> dict:
    return {"problem_type": "regression" if value else "single_label_classification"}


def _always(key: str, what: str, instead: str):
    def translate(value) -> dict:
        if value:
            return {}
        raise RecipeError(f"key '{key}': every run {what}; {instead}")
    return translate


def _do_predict(value) -> dict:
    return {} if value else {"test_fraction": 0.0, "test_file": ["none"]}  # no test split at all


ALIASES: dict[str, Alias] = {
    "label_column_name": Alias(CLASSIFICATION, lambda value: {"label_column": value}, ("label_column",)),
    "text_column_names": Alias(CLASSIFICATION, _text_column_names, ("text_column",)),
    "max_seq_length": Alias(CLASSIFICATION, lambda value: {"max_length": value}, ("max_length",)),
    "metric_name": Alias(CLASSIFICATION, _metric_name, ("problem_type",)),
    "do_regression": Alias(CLASSIFICATION, _problem_type, ("problem_type",), boolean=True),
    "shuffle_train_dataset": Alias(CLASSIFICATION, lambda value: {}, ("problem_type",), boolean=True),
    "validation_split_percentage": Alias(CLM, _validation_percentage, ("validation_fraction",)),
    "evaluation_strategy": Alias(TRANSFORMERS_4, lambda value: {"eval_strategy": value}, ("eval_strategy",)),
    "warmup_ratio": Alias(TRANSFORMERS_4, _warmup_ratio, ("warmup_steps",)),
    "group_by_length": Alias(TRANSFORMERS_4, _group_by_length, ("train_sampling_strategy",), boolean=True),
    "do_train": Alias(EXAMPLES, _always("do_train", "trains", "to score a trained model on a file use "
                                        "scripts/predict.py MODEL FILE --label_column COLUMN"), (), boolean=True),
    "do_eval": Alias(EXAMPLES, _always("do_eval", "evaluates its validation split at the end",
                                       "eval_strategy: no turns off the evaluations during training"), (),
                     boolean=True),
    "do_predict": Alias(EXAMPLES, _do_predict, ("test_fraction", "test_file"), boolean=True),
}
"""Read as lmrecipes' keys by the scripts that have the keys an alias sets (its third field; metric_name and
shuffle_train_dataset set nothing, and belong to fine-tuning). A bare boolean flag (`--do_regression`) is true.
shuffle_train_dataset: the Trainer shuffles every epoch either way (run_classification.py's true is one more
shuffle before). do_predict: false turns the test split off (test_fraction: 0, test_file: none); do_train / do_eval:
false are refused (every run trains and evaluates)."""

NOT_TAKEN: dict[str, str] = {
    "pad_to_max_length": "each batch is padded to its longest row (DataCollatorWithPadding)",
    "overwrite_cache": "the data cache is keyed by the data's contents; delete data_cache_dir to rebuild it",
    "max_predict_samples": "scripts/predict.py scores any file (--label_column); max_eval_samples limits validation",
    "use_fast_tokenizer": "fast tokenizers are always used",
    "remove_splits": "train_file, validation_file and test_file name the splits used",
    "keep_linebreaks": "text files are read as they are (line_by_line: true makes each line a document)",
    "cache_dir": "the Hugging Face cache holds downloads; data_cache_dir holds lmrecipes' tokenized data",
}
"""Example-script keys with no lmrecipes equivalent: named in the unknown-key error with what lmrecipes does."""
