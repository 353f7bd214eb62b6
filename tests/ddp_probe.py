"""Run by test_pretrain.py under `accelerate launch`: a user's script that pretrains through the API and records,
per rank, the world size, a fingerprint of every training batch it saw, and of the final parameters, and how
many parameter values the rank itself holds (FSDP, ZeRO-3: its shard), and whether the fused loss was used."""

import contextlib
import hashlib
import json
import sys
from pathlib import Path

from transformers import TrainerCallback

import lmrecipes


class Probe(TrainerCallback):
    def __init__(self):
        self.batches, self.blocks, self.fused_calls = [], [], []
        self.loader = self.stream_shards = None

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        # accelerate's DataLoaderDispatcher: process 0 reads every batch; DataLoaderShard: each reads its own
        self.loader = type(train_dataloader).__name__
        self.stream_shards = getattr(train_dataloader.dataset, "n_shards", None)
        def record(module, inputs, kw):
            if module.training:
                self.batches.append(hashlib.sha256(kw["input_ids"].numpy().tobytes()).hexdigest())
                self.blocks += [hashlib.sha256(row.numpy().tobytes()).hexdigest() for row in kw["input_ids"]]
        model.register_forward_pre_hook(record, with_kwargs=True)

        def fused(module, inputs, output):  # a fused training call returns no [tokens x vocabulary] logits
            if module.training and getattr(output, "logits", None) is not None:
                self.fused_calls.append(output.logits.numel() == 0)
        model.register_forward_hook(fused)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        from torch.distributed.tensor import DTensor

        local = total = 0
        for p in model.parameters():  # FSDP2: DTensors; DeepSpeed ZeRO-3: a partition in ds_tensor
            if hasattr(p, "ds_tensor"):
                local, total = local + p.ds_tensor.numel(), total + p.ds_numel
            else:
                local += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
                total += p.numel()
        gathered = contextlib.nullcontext()
        if any(hasattr(p, "ds_tensor") for p in model.parameters()):
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(list(model.parameters()))
        params = hashlib.sha256()
        with gathered:  # every rank, same order: whole tensors
            for tensor in model.state_dict().values():
                whole = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
                params.update(whole.detach().float().numpy().tobytes())
        record = {"rank": args.process_index, "world_size": args.world_size, "batches": self.batches,
                  "blocks": self.blocks, "local_parameters": local, "parameters": total,
                  "params": params.hexdigest(), "steps": state.global_step,
                  "device": str(args.device), "tokens": state.num_input_tokens_seen,
                  "fused_calls": self.fused_calls, "loader": self.loader, "stream_shards": self.stream_shards}
        Path(args.output_dir, f"probe-rank{args.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    recipe, corpus, output_dir = sys.argv[1:4]
    overrides = json.loads(sys.argv[4])
    lmrecipes.pretrain(recipe, callbacks=[Probe()], train_file=[corpus], output_dir=output_dir, **overrides)
    lmrecipes.end_launched_process()
