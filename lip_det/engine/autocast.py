"""bfloat16 mixed precision where detectron2's AMPTrainer (float16 on CUDA) does not go: the CPU,
or bfloat16 on CUDA.

detectron2's ``SimpleTrainer.run_step`` says to change the forward pass by changing the model.
:func:`autocast_forward` does that without wrapping it (so ``trainer.model`` stays the detector
and checkpoints keep their names): forward hooks enter ``torch.autocast`` before the training
forward pass and leave it after, also when the forward raises. Evaluation (``eval()`` mode) runs
as it would without them. bfloat16 has float32's exponent range, so no GradScaler is needed.
"""

import torch

__all__ = ["autocast_dtype", "autocast_forward", "unwrap_model"]


def autocast_forward(model, *, device_type, dtype=torch.bfloat16):
    """Run ``model``'s training forward passes under ``torch.autocast(device_type, dtype)``.
    Returns ``model``."""
    contexts = []

    def enter(module, inputs):
        if module.training:
            context = torch.autocast(device_type, dtype=dtype)
            context.__enter__()
            contexts.append(context)

    def leave(module, inputs, output):
        if contexts:
            contexts.pop().__exit__(None, None, None)

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)
    model._lip_det_autocast_dtype = dtype
    return model


def autocast_dtype(model):
    """The dtype :func:`autocast_forward` gave ``model``, or None."""
    return getattr(model, "_lip_det_autocast_dtype", None)


def unwrap_model(model):
    """The model inside a DistributedDataParallel wrapper."""
    return getattr(model, "module", model)
