"""What LIP costs: the lip2d op against avg_pool2d, and LIP-ResNet-FPN detectors against plain ones.

``tools/benchmark.py`` is the command line; :func:`benchmarks.run.run_benchmark` does the work
and returns a JSON-serialisable dict, :func:`benchmarks.report.format_report` prints it. A
developer tool, not part of the installed ``lip_det``: ``tools/benchmark.py`` puts ``tools/`` on
``sys.path`` and imports this package as ``benchmarks``.

- ``op``: lip2d's implementations, the authors' primitive formula and avg_pool2d, per shape;
- ``models``: LIP-R{depth}-FPN Faster R-CNN against its plain twin (time, memory, size, FLOPs);
- ``profile``: where LIP's extra time goes, torch.profiler self time grouped by part of the model;
- ``run``: the whole run and the machine it ran on; ``report``: the printed tables and goals.

Every ratio is measured side by side in one run: the things compared are timed in interleaved
rounds (each round runs each of them once, in a rotating order), and a ratio is the median over
rounds of the per-round ratio, so slow drifts in machine load (a shared machine) cancel
(:func:`lip_det.utils.benchmark.time_interleaved`).

Measures (all per call):

- time: wall clock, ``torch.cuda.synchronize`` before each clock reading on CUDA. An op-level
  sample is a ``torch.utils.benchmark.Timer.blocked_autorange`` of at least 20-50 ms; a
  model-level sample is one call.
- peak memory: bytes allocated while the call runs above what was allocated when it started. On
  CUDA ``torch.cuda.max_memory_allocated``; on CPU, which keeps no allocator statistics, the
  allocation and free events ``torch.profiler`` records (``profile_memory=True``), replayed in
  time order (:func:`lip_det.utils.benchmark.peak_memory_bytes`).
- saved for backward: the bytes of the distinct storages autograd keeps for the backward pass
  (:func:`lip_det.utils.benchmark.saved_tensor_bytes`).
- parameters: ``nn.Parameter`` elements plus the affine weight and bias that detectron2's
  ``FrozenBatchNorm2d`` keeps as buffers (its running statistics are not counted), so a FrozenBN
  model counts the same as with NORM "BN" and as the paper's tables.
- FLOPs: fvcore's ``FlopCountAnalysis`` (one fused multiply-add = one flop) of the bottom-up
  backbone, batch 1. fvcore counts convolutions, linear layers and norms, and skips pooling and
  elementwise ops (the plain stem's max-pool included). lip2d, which it cannot see into, is
  counted by :mod:`lip_det.layers.flops`'s handle as 2·k² per output element: k² multiply-adds
  for the window sum of x·exp(logit), as a k×k depthwise conv counts, and k² adds for the window
  sum of exp(logit); the exp and the division are elementwise and not counted. Logit-module convs
  and InstanceNorms are counted as fvcore counts any conv and norm.
"""

import lip_det  # noqa: F401  (first: detectron2 compatibility fixes)
