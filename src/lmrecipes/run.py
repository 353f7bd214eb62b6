"""The run protocol that pretraining and fine-tuning share, in named phases; each run function reads top to bottom:

    run = Run(training_args, model_args, "pretrain")     # start: logging, CPU threads, launch checks, seed, Hub
    ...                                                   # the job's own: data, tokenizer, model
    throughput = run.throughput(model, seq_len)           # tokens/s and MFU (a callback for the Trainer)
    trainer = run.trainer(lambda: Trainer(...))           # built before output_dir is claimed; parallelism checked
    finished = run.claim(recipe, inputs)                  # a finished run of this recipe: its results, nothing to do
    train_metrics = run.train(trainer)                    # from the last complete checkpoint; final model saved
    ...                                                   # the job's own: evaluation, extra files
    return run.finish(results, "... done: ...")           # recorded as finished, reported, published if asked

What lmrecipes sets in the TrainingArguments for every run is set in `Run.__init__`, in one place.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from accelerate import PartialState
from transformers import TrainerCallback, set_seed

from . import hub
from .checkpoints import checkpoint_step, write_manifest
from .errors import RecipeError, first_line, out_of_space
from .launch import check_launch, fsdp_on_cpu, setup_logging, use_the_cpus
from .modeling import warn_remote_code
from .ownership import files_in
from .parallelism import check_parallelism, choose_unused_parameter_search, save_final_model
from .resume import check_checkpoint_fits, check_resume_request, find_checkpoint
from .run_folder import (
    RUN_MARKER,
    check_output_dir_is_a_folder,
    claim_output_dir,
    find_last_complete_checkpoint,
    record_run,
    record_saved_files,
    run_record,
)
from .run_lock import unlock_run_folder
from .run_report import RunReport, log_scalars_only, write_run_report
from .throughput import ThroughputCallback, throughput_callback

logger = logging.getLogger("lmrecipes")


class Run:
    """One training run of `job` ("pretrain" or "finetune")."""

    def __init__(self, training_args, model_args, job: str):
        self.args, self.job = training_args, job
        setup_logging(training_args)
        use_the_cpus(training_args)
        check_launch(training_args, job)
        check_output_dir_is_a_folder(Path(training_args.output_dir))
        check_resume_request(training_args)
        warn_remote_code(model_args)
        set_seed(training_args.seed)  # the initial weights (of the model, or of a new head) depend on it
        # What lmrecipes sets in the TrainingArguments: a NaN loss shows in the logs (for NonFiniteLossGuard), and
        # lmrecipes publishes the finished run itself (hub_target); how tokens are counted: throughput().
        training_args.logging_nan_inf_filter = False
        # data-loader workers kept between epochs and evaluations: restarting them stalls every rank each time
        training_args.dataloader_persistent_workers = training_args.dataloader_num_workers > 0
        if training_args.device.type == "cpu":  # pinned memory speeds copies to an accelerator; torch warns without
            training_args.dataloader_pin_memory = False
        self.hub = hub_target(training_args)
        self.meter = self.model = None  # the ThroughputCallback (tokens/s, MFU) and the model: throughput()
        self.log_history = []  # the Trainer's, once training starts (results.md's loss curve)

    def throughput(self, model, seq_len: int, packed: bool = False) -> ThroughputCallback:
        """The tokens/s and MFU callback of this run (logs the precision and the MFU basis). `packed`: every row is
        `seq_len` tokens (pretraining blocks), so tokens are counted on the host; otherwise the Trainer counts the
        non-padding tokens of each batch, which costs a device sync per batch."""
        args = self.args
        if packed:
            args.include_num_input_tokens_seen = "no"
        elif args.include_num_input_tokens_seen == "no":
            args.include_num_input_tokens_seen = "non_padding"
        self.meter = throughput_callback(model, args, seq_len, packed)
        self.model = model
        return self.meter

    def trainer(self, build):
        """`build()`'s Trainer, made before output_dir is claimed so that a run whose parallelism is not the one
        asked for stops before anything is written (Trainer() creates output_dir: a folder it created is removed)."""
        out = Path(self.args.output_dir)
        check_output_dir_is_a_folder(out)
        check_checkpoint_fits(self.args.resume_from_checkpoint, self.model)
        existed = out.exists()
        with fsdp_on_cpu():
            trainer = build()
        try:
            check_parallelism(trainer)
            choose_unused_parameter_search(trainer)
        except RecipeError:
            if self.args.should_save and not existed:
                try:
                    out.rmdir()  # only when empty
                except OSError:
                    pass
            raise
        return trainer

    def claim(self, recipe: dict, inputs: dict, unused_keys=frozenset()) -> dict | None:
        """output_dir for this recipe and these inputs (run_folder.claim_output_dir): None to go on, or the
        results of a finished run of the same recipe (nothing to do). `unused_keys`: keys an earlier run's recipe may
        hold that this job no longer writes (not a change)."""
        try:
            return claim_output_dir(self.args, recipe, f"# Resolved recipe of this run (lmrecipes {self.job})", inputs,
                                    unused_keys)
        except OSError as err:  # a read-only disk (remounted after I/O errors), no permission
            raise RecipeError(f"key 'output_dir': cannot write into {self.args.output_dir} ({err.strerror or err})")\
                from None

    def train(self, trainer) -> dict:
        """Train from the last complete checkpoint (or `resume_from_checkpoint`), save the final model, tokenizer and
        trainer_state.json; the train metrics with tokens/s and MFU."""
        if self.meter is None:
            raise RuntimeError("Run.throughput(model, seq_len) comes before Run.train (its callback goes to the "
                               "Trainer)")
        with self.args.main_process_first(local=False, desc="checkpoint check"):  # process 0 removes bad ones first
            checkpoint = find_checkpoint(self.args)
        trainer.add_callback(NonFiniteLossGuard())
        trainer.add_callback(RunFilesRecorder())
        trainer.add_callback(NoStepPastTheEnd())
        log_scalars_only(trainer)
        announce_stream_skip(trainer, checkpoint)
        try:
            metrics = self._train_and_save(trainer, checkpoint)
        except Exception as err:  # noqa: BLE001 - safetensors' SafetensorError is a plain Exception
            if not out_of_space(err):
                raise
            where = getattr(err, "filename", None) or f"into {self.args.output_dir}"
            raise RecipeError(f"writing {where} failed ({first_line(err)}): free some space (the disk or quota is "
                              "full), then run the same command again (it resumes from the last complete checkpoint, "
                              "if any)") from None
        self.log_history = trainer.state.log_history  # the final evaluations add to it
        metrics.update(self.meter.metrics)
        metrics.setdefault("mfu", None)  # stated as unknown (null) rather than guessed
        # the Trainer's table formats every value as a number: unknown ones (null) are saved, not printed
        trainer.log_metrics("train", {key: value for key, value in metrics.items() if value is not None})
        trainer.save_metrics("train", metrics)
        if self.args.should_save:
            record_saved_files(Path(self.args.output_dir))  # the final model, tokenizer, state and train results
        return metrics

    def _train_and_save(self, trainer, checkpoint) -> dict:
        results = Path(self.args.output_dir) / "all_results.json"  # the Trainer adds each split's metrics to it
        if self.args.should_save and results.is_file() and not _readable_json(results):
            logger.warning("Removing %s, cut short by a stop while it was written; it is written again", results)
            results.unlink()
        resumed_at = checkpoint_step(checkpoint) if checkpoint else None  # read now: training may rotate it away
        try:
            metrics = dict(trainer.train(resume_from_checkpoint=checkpoint).metrics)
            if trainer.state.global_step == resumed_at and resumed_at >= trainer.state.max_steps:
                metrics = complete_training_metrics(trainer, checkpoint, self.meter)  # epoch-based: no step left
        except TrainingWasComplete:
            metrics = finish_complete_training(trainer, checkpoint, self.meter)
        save_final_model(trainer)
        trainer.save_state()
        if self.args.should_save:  # recorded now: a stop before the results still leaves them the run's
            record_saved_files(Path(self.args.output_dir))
        return metrics

    def finish(self, results: dict, summary: str, folders: tuple[str, ...] = (), report: RunReport | None = None
               ) -> dict:
        """The run is done: results.md and its figures written (`report`), the files it wrote since training
        (results, `folders` that belong to the model) recorded and the run marked finished; `summary` printed (main
        process); published when asked."""
        if self.args.should_save:
            if report is not None:
                write_run_report(Path(self.args.output_dir), report, results, self.log_history)
            record_saved_files(Path(self.args.output_dir), finished=True, folders=folders)
        if self.args.should_log:
            print(summary, flush=True)
        publish_if_asked(self.args, self.hub)
        unlock_run_folder(Path(self.args.output_dir))
        return results


def hub_target(training_args) -> dict | None:
    """`push_to_hub: true` in a recipe: lmrecipes publishes the finished run itself (model card, safetensors only,
    no checkpoints or pickles), so the Trainer's own pushing is switched off. The token and the network are
    checked before training starts, and the token is dropped from the arguments (training_args.bin is pickled)."""
    token, training_args.hub_token = training_args.hub_token, None
    if not training_args.push_to_hub:
        return None
    target = {"repo_id": training_args.hub_model_id or Path(training_args.output_dir).resolve().name,
              "private": bool(training_args.hub_private_repo), "token": hub.hub_token(token)}
    if training_args.should_save:
        hub.check_hub_reachable()
    training_args.push_to_hub = False
    return target


def publish_if_asked(training_args, target: dict | None) -> str | None:
    """Upload the finished run (main process) when the recipe asked for it; returns the repository URL."""
    if target is None or not training_args.should_save:
        return None
    result = hub.publish(training_args.output_dir, target["repo_id"], private=target["private"], token=target["token"])
    print(f"Published to {result['url']}", flush=True)
    return result["url"]


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


class TrainingWasComplete(Exception):
    """Raised by NoStepPastTheEnd: the checkpoint resumed from is the run's last step."""


class NoStepPastTheEnd(TrainerCallback):
    """Resumed from a checkpoint at the run's last step (a run stopped during its final save or evaluation), the
    Trainer (transformers 5.25 and earlier) runs one more optimizer step before it checks max_steps, past the
    schedule, and saves a checkpoint one step beyond it. This stops it before that step's forward pass, once the
    Trainer has loaded the checkpoint (weights, optimizer, state) as for any resume; Run.train then finishes the run
    from there (finish_complete_training). Drop it once the Trainer checks max_steps before a step."""

    def on_train_begin(self, args, state, control, **kwargs):
        if 0 < state.max_steps < state.global_step:  # e.g. an epoch-based run resumed on more processes
            raise RecipeError(f"the checkpoint resumed from is at step {state.global_step}, past this run's "
                              f"{state.max_steps} steps; resume an earlier checkpoint (resume_from_checkpoint) or "
                              "train longer (max_steps)")

    def on_step_begin(self, args, state, control, **kwargs):
        if 0 < state.max_steps <= state.global_step:
            raise TrainingWasComplete


def complete_training_metrics(trainer, checkpoint: str, meter: ThroughputCallback) -> dict:
    """The train metrics of a run resumed from its last step: what the checkpoint's state holds (the loss, time and
    speed of the earlier session are not kept in a checkpoint; the Trainer's own figures would be those of no
    step)."""
    state = trainer.state
    logger.info("%s is the run's last step (%d of %d): training was complete; finishing the run from it",
                checkpoint, state.global_step, state.max_steps)
    return {"epoch": state.epoch, "total_flos": state.total_flos, "train_tokens": meter.tokens(state),
            "hardware": meter.hardware}


def finish_complete_training(trainer, checkpoint: str, meter: ThroughputCallback) -> dict:
    """The end of training, for a run stopped by NoStepPastTheEnd: the Trainer's own (best checkpoint loaded when
    the recipe asks, checkpoints beyond save_total_limit deleted, on_train_end callbacks), its zero-step figures
    replaced by the checkpoint's."""
    trainer._finalize_training(None, 0, time.time())
    return complete_training_metrics(trainer, checkpoint, meter)


class RunFilesRecorder(TrainerCallback):
    """Keeps the run's marker up to date as the Trainer writes: the checkpoint it is about to write (pending), then
    that checkpoint's files and the TensorBoard event files. A failure to record only makes a later
    overwrite_output_dir refuse, so it is a warning, never the end of the run."""

    @staticmethod
    def _update(args, **changes):
        if not args.should_save:
            return
        try:
            record_run(Path(args.output_dir), **changes)
        except OSError as err:
            logger.warning("Could not update %s: %s", RUN_MARKER, err)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            self._update(args, pending=[f"checkpoint-{state.global_step}"])

    on_epoch_end = on_step_end  # save_strategy: epoch decides there

    def on_evaluate(self, args, state, control, **kwargs):
        if args.save_strategy == "best":  # decided after the evaluation, right before the save: may be saved
            self._update(args, pending=[f"checkpoint-{state.global_step}"])

    @staticmethod
    def _files_under(out: Path, folder: str, only: str = "") -> list[str]:
        return [f"{folder}/{name}" for name in files_in(out / folder) if only in name] if (out / folder).is_dir() \
            else []

    def on_save(self, args, state, control, **kwargs):
        out, folder = Path(args.output_dir), f"checkpoint-{state.global_step}"
        PartialState().wait_for_everyone()  # each process writes its own random state: wait for all of them
        if args.should_save and (out / folder).is_dir():
            try:
                write_manifest(out / folder, run_record(out).get("run_id"))
            except OSError as err:  # the checkpoint is still checked by its files' formats when resumed
                logger.warning("Could not flush %s to disk and write its manifest: %s", out / folder, err)
        self._update(args, files=self._files_under(out, folder) + self._files_under(out, "runs", "tfevents"),
                     done_pending=[folder])

    def on_train_begin(self, args, state, control, **kwargs):
        self._update(args, files=self._files_under(Path(args.output_dir), "runs", "tfevents"))


class NonFiniteLossGuard(TrainerCallback):
    """Stops a run whose training loss became NaN or inf, naming the step, before it saves anything.

    The loss is logged (and so checked) at every checkpoint step and at the last step too, so neither a checkpoint
    nor the final model is written from a diverged model (also with save_strategy: no): the last good checkpoint
    stays the last one. Needs `logging_nan_inf_filter=False` (Run sets it), else the Trainer hides non-finite
    losses from the logs.
    """

    def on_step_end(self, args, state, control, **kwargs):
        # the last step is logged too: the final model is saved after it even when no checkpoint is
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            control.should_save, control.should_training_stop = False, True
            good = find_last_complete_checkpoint(Path(args.output_dir))
            raise RecipeError(f"training loss became {loss} by step {state.global_step}: run stopped, nothing saved "
                              f"from it; last good checkpoint: {good or 'none'} (lower learning_rate, check the data "
                              "or max_grad_norm)")


class _StreamSkipProgress:
    """Batched `IterableDataset.filter` function that keeps every block and logs how far the Trainer's skip of the
    first `count` blocks has read (one process reading the stream: no data-loader workers)."""

    def __init__(self, count: int):
        self.count, self.every, self.seen = count, max(count // 10, 1), 0

    def __call__(self, blocks) -> list[bool]:
        size = len(next(iter(blocks.values())))
        if self.seen < self.count:
            before, self.seen = self.seen, self.seen + size
            if self.seen // self.every > before // self.every or self.seen >= self.count:
                logger.info("Resuming the stream: %d of %d blocks read again (%.0f%%)", min(self.seen, self.count),
                            self.count, 100 * min(self.seen, self.count) / self.count)
        return [True] * size


class _StreamSkipTimer(TrainerCallback):
    start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.start is not None:
            logger.info("Resuming the stream: skipped in %.1f s", time.monotonic() - self.start)
            self.start = None


def announce_stream_skip(trainer, checkpoint: str | None) -> None:
    """Resuming a streaming run, the Trainer skips the batches already trained on by reading the stream again from
    its start (each process its own share), and says so below the default log level. This says how many, with
    progress and the time it took.

    No resumable position is used, so an exact resume reads the stream again: the Trainer (transformers 5.25 and
    earlier) does not use accelerate's stateful data loader, and datasets' `IterableDataset.state_dict` does not
    keep a shuffle buffer (lmrecipes shuffles streams); a position becomes possible once both do. Dropping the
    trained blocks inside the stream (before collation) would be wrong with data-loader workers (each worker skips
    its own share) and past the stream's first pass, and measured no faster on one process.
    """
    import datasets

    if checkpoint is None or not isinstance(trainer.train_dataset, datasets.IterableDataset) or \
            trainer.args.ignore_data_skip:
        return
    args = trainer.args
    step = checkpoint_step(checkpoint)
    batches = step * args.gradient_accumulation_steps
    # each process reads its own share of the stream; dispatched, process 0 reads every process's batch (or,
    # split_batches, one batch split between them)
    dispatched = args.accelerator_config.dispatch_batches and not args.accelerator_config.split_batches
    count = batches * args.train_batch_size * (args.world_size if dispatched else 1)
    if count == 0:
        return
    logger.info("Resuming a stream at step %d: skipping the %d batches (%d blocks) trained on, by reading the stream "
                "again from its start (a shuffled stream keeps no position)", step, batches, count)
    if args.dataloader_num_workers == 0:
        trainer.train_dataset = trainer.train_dataset.filter(_StreamSkipProgress(count), batched=True,
                                                             batch_size=256)
    trainer.add_callback(_StreamSkipTimer())
