"""A causal LM's training loss without its logits: the output layer and the cross-entropy computed together, a chunk
of tokens at a time, gradients included (`fused_loss` recipe key).

A causal LM's stock training step materialises logits for every token ([tokens x vocabulary]: 16 x 256 x 4,096
floats for the tiny recipe), upcasts them to fp32, takes their log-softmax and, in the backward pass, a gradient of
the same size: memory traffic that, on a CPU in bf16, costs the tiny recipe a quarter to two fifths of its step
(with this loss: 1.35-1.7x tokens/s, benchmarks/README.md). Here each chunk of tokens gets its logits, loss and
gradients (softmax - one-hot) while they sit in cache, and only the gradients of the hidden states and of the output
layer's weights are kept for the backward pass.

Hand-written because nothing installed does it on a CPU: transformers' `use_liger_kernel` (Liger Kernel's fused
linear cross-entropy) and Apple's cut-cross-entropy are Triton kernels for GPUs, and a `torch.compile`d step of the
tiny recipe (~20 s to compile) was slower per step than this one (benchmarks/README.md).

How it attaches without touching the model's code or its weights' names: a forward pre-hook on the model notes a
training call with labels; in such a call the output layer returns an empty tensor and keeps its input, and the
model's `loss_function` (transformers' per-model loss hook) receives that empty tensor and computes the loss from
the kept hidden states. Evaluation, generation and calls without labels run the model's own code. Before it is used,
a probe compares its loss with the model's own on a made-up batch: a model that changes its logits between output
layer and loss (Gemma's soft-capping, scaled logits) or computes its loss elsewhere keeps its own loss.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .errors import RecipeError
from .launch import sharding_asked_for

logger = logging.getLogger("lmrecipes")

CHUNK_ELEMENTS = 2**21  # logits per chunk (8 MB in fp32): fits in L2/L3 with their gradient; see chunk_rows


def chunk_rows(vocab_size: int) -> int:
    """Tokens per chunk: 512 for a 4,096-token vocabulary, 65 for 32,000, 16 at the least (the matmul with the
    output layer's weights stays large whatever the vocabulary)."""
    return max(16, CHUNK_ELEMENTS // vocab_size)


def _compute_dtype(device_type: str, weight: torch.Tensor) -> torch.dtype:
    """The dtype the output layer's matmul runs in: autocast's where it is on (as nn.Linear would), else the
    weight's."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype


def _chunk_logits(hidden_chunk, weight, bias):
    logits = (hidden_chunk @ weight.t()).float()
    return logits + bias.float() if bias is not None else logits


def _chunked_loss(hidden, weight, bias, labels, rows: int, dtype, wanted=(False, False, False)):
    """(sum over scored tokens of cross_entropy(hidden @ weight.T + bias, label), [gradient of that sum for hidden,
    weight, bias where `wanted`, else None]), one chunk of `rows` tokens at a time; matmuls in `dtype`, softmax in
    fp32, gradients of weight and bias accumulated in fp32."""
    h, w = hidden.to(dtype), weight.to(dtype)
    want_h, want_w, want_b = wanted
    grad_h = torch.zeros_like(h) if want_h else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
    grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if want_b else None
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, h.shape[0], rows):
        chunk_labels = labels[start:start + rows]
        scored = chunk_labels != -100
        if not bool(scored.any()):
            continue
        h_chunk = h[start:start + rows]
        logits = _chunk_logits(h_chunk, w, bias)
        log_norm = torch.logsumexp(logits, dim=-1)
        targets = torch.where(scored, chunk_labels, 0)
        target_logits = logits.gather(1, targets[:, None]).squeeze(1)
        total += ((log_norm - target_logits) * scored).sum()
        if not any(wanted):
            continue
        # d loss / d logits = softmax - one-hot, zero for unscored tokens (computed in place over the logits)
        grad_logits = logits.sub_(log_norm[:, None]).exp_()
        grad_logits.scatter_add_(1, targets[:, None], torch.full_like(target_logits, -1.0)[:, None])
        grad_logits.mul_(scored[:, None])
        if want_b:
            grad_b += grad_logits.sum(0)
        grad_logits = grad_logits.to(dtype)
        if want_h:
            grad_h[start:start + rows] = grad_logits @ w
        if want_w:
            grad_w += (grad_logits.t() @ h_chunk).float()
    return total, [grad_h, grad_w, grad_b]


class _LinearCrossEntropy(torch.autograd.Function):
    """_chunked_loss's sum; its gradients are computed in the forward pass (one pass over the chunks) and scaled by
    the incoming gradient in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, rows, dtype):
        total, grads = _chunked_loss(hidden, weight, bias, labels, rows, dtype, ctx.needs_input_grad[:3])
        ctx.save_for_backward(*grads)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    @once_differentiable  # the gradients were computed in forward: no second derivative
    def backward(ctx, grad_total):
        grads = [None if grad is None else grad.mul_(grad_total).to(dtype)  # saved for this backward alone
                 for grad, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None, None, None)


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             labels: torch.Tensor) -> torch.Tensor:
    """sum over tokens with label != -100 of cross_entropy(hidden @ weight.T + bias, label), in chunks of
    chunk_rows(vocabulary) tokens; hidden [tokens, hidden size], labels [tokens]. The matmuls run in autocast's
    dtype where autocast is on, the softmax in fp32."""
    device_type = hidden.device.type
    dtype = _compute_dtype(device_type, weight)
    rows = chunk_rows(weight.shape[0])
    wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    with torch.autocast(device_type, enabled=False):
        if not wants_grad:  # evaluation or a probe: the loss alone
            return _chunked_loss(hidden, weight, bias, labels, rows, dtype)[0]
        return _LinearCrossEntropy.apply(hidden, weight, bias, labels, rows, dtype)


class FusedCausalLMLoss:
    """The fused loss attached to one causal LM (a transformers PreTrainedModel whose output layer is a plain
    nn.Linear): `attach()` (None once attached, else why not, the model left as it was) and `detach()`."""

    def __init__(self, model):
        self.model = model
        self.head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self._fused_call = False  # inside a training call with labels (or the probe)
        self._forced = False  # the probe: fused outside training too
        self._used = False  # the fused loss ran (the probe checks that the model called it)
        self._hidden = self._returned = None
        self._hooks = []
        self._own_loss = self._previous_loss = self._own_head_forward = None

    def why_not(self) -> str | None:
        if self.head is None or type(self.head).forward is not nn.Linear.forward:
            return f"its output layer is not a plain linear layer ({type(self.head).__name__})"
        if not hasattr(type(self.model), "loss_function"):
            return "it has no transformers loss_function to replace"
        return None

    def attach(self) -> str | None:
        """Attach, once a made-up batch (2 x 16 tokens, no dropout) shows that the model calls the fused loss and
        that it equals the model's own loss; else return why not."""
        why = self.why_not()
        if why is not None:
            return why
        vocab = self.model.get_input_embeddings().num_embeddings
        ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0)).to(self.head.weight.device)
        try:
            own = self._probe_loss(ids)  # before anything is attached
        except Exception as err:  # noqa: BLE001 - the model's own failure is not ours to report here
            return f"the model's own loss fails on a made-up batch ({type(err).__name__})"
        self._hook_in()
        self._forced, self._used = True, False
        try:
            fused = self._probe_loss(ids)
            why = self._differs(own, fused)
        except Exception as err:  # noqa: BLE001 - any failure means: keep the model's own loss
            why = f"the fused loss does not run on this model ({type(err).__name__}: {str(err)[:120]})"
        finally:
            self._forced = False
        if why is not None:
            self.detach()
        return why

    def _probe_loss(self, ids):
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return self.model(input_ids=ids, labels=ids).loss
        finally:
            self.model.train(was_training)

    def _differs(self, own, fused) -> str | None:
        if not self._used:
            return "the model computes its logits or its loss without its output layer and loss_function"
        tolerance = 1e-4 if self.head.weight.dtype == torch.float32 else 2e-2
        if own is None or fused is None or not torch.isclose(fused.float(), own.float(), rtol=tolerance):
            return (f"this model's loss ({float(own):.6f}) differs from the fused one ({float(fused):.6f}): it changes "
                    "its logits before the loss") if own is not None and fused is not None else "no loss to compare"
        return None

    def _hook_in(self) -> None:
        self._own_loss = self.model.loss_function
        self._previous_loss = vars(self.model).get("_loss_function")
        self._own_head_forward = self.head.forward
        self.model.loss_function = self._loss  # transformers' setter: this model only
        self.head.forward = self._head_forward  # an instance attribute: the class and the weights' names unchanged
        self._hooks = [self.model.register_forward_pre_hook(self._before_call, with_kwargs=True),
                       self.model.register_forward_hook(self._after_call, always_call=True)]

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        vars(self.head).pop("forward", None)
        if self._previous_loss is None:
            vars(self.model).pop("_loss_function", None)
        else:
            self.model.loss_function = self._previous_loss

    def _before_call(self, module, args, kwargs):
        self._fused_call = kwargs.get("labels") is not None and (
            self._forced or (module.training and torch.is_grad_enabled()))
        self._hidden = self._returned = None

    def _after_call(self, module, args, output):
        self._fused_call = False
        self._hidden = self._returned = None  # nothing kept between calls

    def _head_forward(self, hidden):
        if not self._fused_call:
            return self._own_head_forward(hidden)
        self._hidden = hidden
        self._returned = hidden.new_empty((*hidden.shape[:-1], 0))  # the model's `logits` in a fused call
        return self._returned

    def _loss(self, logits, labels, vocab_size=None, num_items_in_batch=None, ignore_index=-100,
              shift_labels=None, **kwargs):
        """transformers' ForCausalLMLoss (labels shifted by one, mean over scored tokens or sum / the Trainer's
        num_items_in_batch) from the kept hidden states instead of logits."""
        if self._returned is None:
            return self._own_loss(logits=logits, labels=labels, vocab_size=vocab_size,
                                  num_items_in_batch=num_items_in_batch, ignore_index=ignore_index,
                                  shift_labels=shift_labels, **kwargs)
        if logits is not self._returned:
            raise RuntimeError("fused_loss: the model changed its output layer's result before the loss")
        self._used = True
        if shift_labels is None:
            shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
        targets = shift_labels.reshape(-1).to(self._hidden.device)
        if ignore_index != -100:  # (-100 itself stays ignored too, where the stock loss would fail on it)
            targets = targets.masked_fill(targets == ignore_index, -100)
        total = linear_cross_entropy_sum(self._hidden.reshape(-1, self._hidden.shape[-1]), self.head.weight,
                                         self.head.bias, targets)
        if num_items_in_batch is None:
            return total / (targets != -100).sum()
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch


def use_fused_loss(model, training_args, setting: str | None) -> FusedCausalLMLoss | None:
    """Attach the fused loss to a causal LM where `fused_loss` (auto | true | false; None = auto) and the run allow
    it, and log the choice. auto: on when training runs on the CPU (measured there: benchmarks/README.md); GPUs keep the
    model's own loss (transformers' use_liger_kernel is the GPU kernel). Returns the attachment (detach() it after
    training) or None. Called before the Trainer exists, so that a refusal stops the run before anything is written."""
    setting = setting or "auto"
    sharding = sharding_asked_for()
    frees_weights = "gathers and frees the output layer's weights around its own call"
    blockers = [  # (what else would compute this loss or manage the output layer's weights, is it on, why)
        ("FSDP", sharding == "FSDP" or bool(training_args.fsdp), frees_weights),
        ("DeepSpeed", sharding == "DeepSpeed" or bool(training_args.deepspeed), frees_weights),
        ("torch_compile", training_args.torch_compile, "fuses the loss itself"),
        ("use_liger_kernel", getattr(training_args, "use_liger_kernel", False),
         "Liger's fused loss replaces the model's"),
        ("label_smoothing_factor", bool(getattr(training_args, "label_smoothing_factor", 0)),
         "the Trainer smooths the loss from the model's logits")]
    blocker, reason = next(((name, why) for name, on, why in blockers if on), (None, None))
    if setting == "false":
        why = "fused_loss: false"
    elif blocker is not None:
        if setting == "true":
            raise RecipeError(f"key 'fused_loss': not with {blocker} (set fused_loss: auto or false)")
        why = f"fused_loss auto: not with {blocker}: {reason}"
    elif training_args.device.type != "cpu":
        if setting == "true":  # its chunks are sized for a CPU's caches: many small launches on a GPU
            raise RecipeError(f"key 'fused_loss': true is for CPU training (this run trains on "
                              f"{training_args.device.type}); for a fused loss on GPUs set use_liger_kernel: true")
        why = f"fused_loss auto: on for CPU training; this run trains on {training_args.device.type}"
    else:
        fused = FusedCausalLMLoss(model)
        why = fused.attach()
        if why is None:
            logger.info("LM loss: output layer and cross-entropy fused, %d tokens a chunk, no logits kept "
                        "(fused_loss %s)", chunk_rows(fused.head.weight.shape[0]), setting)
            return fused
        if setting == "true":
            raise RecipeError(f"key 'fused_loss': {why}")
        why = f"fused_loss auto: {why}"
    logger.info("LM loss: the model's own (%s)", why)
    return None
