"""Publishing keys (`scripts/publish.py`): which run, where on the Hub, and what the model card says."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class PublishArguments:
    """`scripts/publish.py MODEL_DIR --repo_id USER/NAME`: what to publish and where."""

    model_dir: str = field(metadata={"help": "A pretraining or fine-tuning output folder (plain or LoRA adapter)."})
    repo_id: str | None = field(default=None, metadata={"help": "Hub repository USER/NAME (or ORG/NAME)."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repository private."})
    dry_run: bool = field(default=False, metadata={"help": "Write the folder and list what would be uploaded; "
                                                           "no network, no token needed."})
    publish_dir: str | None = field(default=None, metadata={"help": "Where the Hub-ready folder is written "
                                                                    "(default: MODEL_DIR/hub)."})
    lora_as: Literal["auto", "adapter", "merged"] = field(
        default="auto", metadata={"help": "A LoRA run is published as its adapter (needs the base model's Hub id) or "
                                  "merged into a plain checkpoint; auto: adapter when the base is a Hub id."})
    base_model: str | None = field(default=None, metadata={"help": "Hub id (USER/NAME) of the model this one was "
                                                                   "fine-tuned from (default: the run's "
                                                                   "model_name_or_path when that is a Hub id). A local "
                                                                   "path is refused: the card and adapter_config.json "
                                                                   "name it for other people."})
    license: str = field(default="apache-2.0", metadata={"help": "Licence of the published weights (card metadata)."})
    language: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "Languages (card metadata)."})
    datasets: list[str] = field(default_factory=list, metadata={
        "help": "Hub dataset ids of the training data (default: the recipe's dataset_name, if any)."})
    commit_message: str = field(default="Upload model trained with lmrecipes", metadata={"help": "Hub commit message."})

    def __post_init__(self):  # the command line checks these through argparse; the Python API comes here directly
        from ..errors import RecipeError

        if self.lora_as not in ("auto", "adapter", "merged"):
            raise RecipeError(f"key 'lora_as': auto, adapter or merged, got {self.lora_as!r}")
        for key in ("private", "dry_run"):
            if not isinstance(getattr(self, key), bool):
                raise RecipeError(f"key '{key}': true or false, got {getattr(self, key)!r}")

