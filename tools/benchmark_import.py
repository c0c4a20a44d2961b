"""What ``import lip_det`` costs next to ``import detectron2.modeling``, in this Python.

    python tools/benchmark_import.py [--runs 7] [--python PYTHON] [--as-is] [--json]

Each run starts two fresh interpreters, one per statement, in alternating order (so that a slow
spell of a shared machine hits both alike), and times the statement inside the child
(``time.perf_counter`` around it: the interpreter's own start-up, the same for both, is left
out). It prints the median of each and their ratio, for the wall time and for the child's CPU
time (which a busy machine disturbs less); ``--json`` prints one JSON object instead.

Both statements run once first, uncounted. With ``PYTHONDONTWRITEBYTECODE`` set, a checkout's
lip_det would be compiled from source at every import while site-packages' detectron2 is read
from the ``.pyc`` files its installation wrote (about half of lip_det's own import time here), so
the children run without it and that first run writes lip_det's ``__pycache__`` (ignored by git),
as an installed lip_det has; ``--as-is`` keeps the environment unchanged.

Where ``import detectron2.modeling`` fails on its own (the package-index v0.6 code without
``_C``, on Pillow >= 10) the baseline first gives it the least it needs: an empty
``detectron2._C`` module and ``PIL.Image.LINEAR``. Then the ratio counts everything lip_det adds,
its compatibility machinery included; the output says which baseline ran.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_TIMED = """
import time
t, cpu = time.perf_counter(), time.process_time()
{setup}
import {module}
print("IMPORT_SECONDS", time.perf_counter() - t, time.process_time() - cpu)
"""
# the least that detectron2's v0.6 code from the package index needs to import at all
_BARE_SETUP = """
import importlib.util, sys, types
if importlib.util.find_spec("detectron2._C") is None:
    sys.modules["detectron2._C"] = types.ModuleType("detectron2._C")
from PIL import Image
if not hasattr(Image, "LINEAR"):
    Image.LINEAR = Image.BILINEAR
"""


def time_import(module, setup="", python=sys.executable, as_is=False):
    """(wall, CPU) seconds that ``import module`` (after ``setup``) takes in a fresh interpreter."""
    code = _TIMED.format(setup=setup, module=module)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if not as_is:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    result = subprocess.run(
        [python, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("IMPORT_SECONDS ")]
    if result.returncode != 0 or not lines:
        error = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"import {module} failed: {error}")
    wall, cpu = lines[-1].split()[1:]
    return float(wall), float(cpu)


def _summary(baseline, lip_det):
    base, lip = statistics.median(baseline), statistics.median(lip_det)
    return {
        "detectron2_modeling_s": base,
        "lip_det_s": lip,
        "ratio": lip / base,
        "ratio_of_pairs": statistics.median(a / b for a, b in zip(lip_det, baseline)),
        "detectron2_modeling_runs_s": baseline,
        "lip_det_runs_s": lip_det,
    }


def benchmark(runs=7, python=sys.executable, as_is=False):
    """Medians and ratios: the wall times at the top level (``detectron2_modeling_s``,
    ``lip_det_s``, ``ratio``, ...), the same for the CPU time of the child under ``"cpu"``
    (steadier on a shared machine), and which baseline ran (``baseline_note``)."""
    setup, note = "", "import detectron2.modeling, unaided"
    # the first run of each (the file cache, bytecode, which baseline) does not count
    try:
        time_import("detectron2.modeling", python=python, as_is=as_is)
    except RuntimeError as e:
        setup = _BARE_SETUP
        note = f"import detectron2.modeling after a bare _C module and Image.LINEAR ({e})"
    time_import("lip_det", python=python, as_is=as_is)
    times = {"baseline": [], "lip_det": []}
    for i in range(runs):
        pair = [("baseline", "detectron2.modeling", setup), ("lip_det", "lip_det", "")]
        for kind, module, module_setup in pair if i % 2 else pair[::-1]:
            times[kind].append(time_import(module, module_setup, python=python, as_is=as_is))
    wall = {kind: [w for w, _ in found] for kind, found in times.items()}
    cpu = {kind: [c for _, c in found] for kind, found in times.items()}
    return {
        "python": python,
        "runs": runs,
        "baseline_note": note,
        "bytecode": "as is" if as_is else "written and read (PYTHONDONTWRITEBYTECODE unset)",
        **_summary(wall["baseline"], wall["lip_det"]),
        "cpu": _summary(cpu["baseline"], cpu["lip_det"]),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="interleaved pairs (default 7)")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    parser.add_argument(
        "--as-is", action="store_true", help="keep PYTHONDONTWRITEBYTECODE if it is set"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = benchmark(args.runs, args.python, args.as_is)
    if args.json:
        print(json.dumps(result))
        return
    print(f"python: {result['python']}")
    print(f"baseline: {result['baseline_note']}")
    print(f"bytecode: {result['bytecode']}")
    print(f"{args.runs} interleaved pairs of fresh interpreters; medians")
    for what, figures in [("wall", result), ("CPU", result["cpu"])]:
        for label, key in [
            ("import detectron2.modeling", "detectron2_modeling"),
            ("import lip_det", "lip_det"),
        ]:
            runs = " ".join(f"{s:.2f}" for s in figures[f"{key}_runs_s"])
            print(f"{what:<4}  {label:<26}  {figures[f'{key}_s']:6.3f} s  (runs: {runs})")
        print(
            f"{what:<4}  ratio lip_det / detectron2.modeling: {figures['ratio']:.3f} "
            f"(median of the pairs' ratios: {figures['ratio_of_pairs']:.3f})"
        )


if __name__ == "__main__":
    main()
