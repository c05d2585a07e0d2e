"""bench/gpu_check.sh's CPU dry run: everything the GPU run does before its first CUDA call.

It installs the GPU wheels (from ../shared/gpu/wheels, the cp312 builds installed for Python 3.12 into a target
folder), maps ctxqa's folders into one import package without pip, builds every random-weight GPTQ checkpoint
the check uses (the 7B-shaped one with 1 layer instead of 32 here) and collects the GPU tests. Then it stops, and
says so. A failure in any of those steps would cost the one device call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]


def test_the_dry_run_prepares_everything_up_to_the_first_cuda_call(shared_data: Path, tmp_path: Path) -> None:
    wheels = shared_data.parent / "gpu" / "wheels"
    if not any(wheels.glob("exllamav2-*.whl")):
        skip_or_fail(f"no exllamav2 wheel in {wheels}")
    whl = tmp_path / "whl"  # what `bash bench/gpu_check.sh --prepare` puts in .whl/ (pytest's wheels aside)
    shutil.copytree(wheels, whl)
    work, out = tmp_path / "work", tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_WORK": str(work), "CTXQA_WHEELS": str(whl), "BENCH_LAYERS_DRY": "1",
           "PYTHON": sys.executable}
    r = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, text=True, capture_output=True,
                       timeout=1800)
    print(r.stdout[-4000:])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "DRY RUN: stopping before the first CUDA call" in r.stdout
    assert "exllamav2-0.3.2.dist-info" in r.stdout and "pydantic_settings-" in r.stdout
    assert "ctxqa importable" in r.stdout and "tests collected" in r.stdout
    built = sorted(p.parent.name for p in work.glob("*/config.json"))
    assert built == ["b7-1", "g-1-act0", "g-1-act1", "g128-act0", "g128-act1", "g32-act0", "g32-act1", "g64-act0",
                     "g64-act1", "rope"]
    cfg = json.loads((work / "b7-1" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["vocab_size"]) == (4096, 11008, 32, 32000)
    assert cfg["quantization_config"]["group_size"] == 128 and cfg["quantization_config"]["desc_act"] is True
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["machine"]["status"] == "INFO" and "CUDA available False" in report["machine"]["detail"]
    assert not any(v["status"] == "FAIL" for v in report.values())
