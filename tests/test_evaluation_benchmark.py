"""tools/benchmark_eval.py on a few images (the real run uses >= 5000)."""

import runpy
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "benchmark_eval.py"


def test_benchmark_prints_machine_timings_and_agreement(capsys):
    main = runpy.run_path(str(TOOL), run_name="benchmark_eval")["main"]
    speedup = main(
        ["--images", "20", "--categories", "4", "--with-official-buckets", "--bootstrap", "50"]
    )
    out = capsys.readouterr().out
    assert "data: 20 images" in out
    assert "machine: " in out and "usable cores" in out and "faster-coco-eval" in out
    assert "pycocotools COCOeval, 4 area ranges (all/S/M/L)" in out
    assert "7 buckets + all/S/M/L" in out
    assert "largest difference of AP..ARl between the two (percent points): 0.00e+00" in out
    assert "[0,4), [4,8), [8,16), [16,32), [32,64), [64,128), [128,inf)" in out
    assert speedup > 0
    assert "paired bootstrap, 2 runs, 50 resamples, 7 buckets + all/S/M/L, 20 images:" in out
    for step in ("fast evaluation of 2 runs", "per-image matching", "50 resamples", "total"):
        assert f"  {step}" in out
    assert "AP delta b - a: " in out
