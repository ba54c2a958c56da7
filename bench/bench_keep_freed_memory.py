"""Does `train.keep_freed_memory` speed up CPU training? Short world runs with it off and on, side by side.

    python bench/bench_keep_freed_memory.py [--recipe tasks/world/tiny.yaml] [--steps 300] [--rounds 2]

The setting changes glibc's malloc for the whole process (ofa/training/memory.py), so each run is its own
`ofa train` process: `--rounds` rounds of (off, on), each `--steps` steps without the stem stage, periodic eval
or checkpoints. Per run: the median logged samples/s after step 50, the wall time of the process, its minor page
faults per step (start-up included) and its peak resident size; then the median ratio on / off over the rounds.
It also checks that both settings trained the same weights (the setting must change speed only). Run it alone:
the two cores are shared by everything else on the machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(recipe: str, steps: int, keep: bool, output: Path) -> dict[str, float]:
    start = time.perf_counter()
    command = [
        sys.executable, "-m", "ofa.cli", "train", recipe, f"train.max_steps={steps}", "stem_pretrain=null",
        "train.eval_every=0", f"train.checkpoint_every={steps}", "train.progress_bar=none",
        f"train.output_dir={output}", f"train.keep_freed_memory={str(keep).lower()}",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)  # this child's own resource usage
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"{' '.join(command)} failed with exit code {code}")
    wall = time.perf_counter() - start
    with open(output / "logs" / "version_0" / "metrics.csv", newline="") as f:
        rates = [
            float(row["train/samples_per_sec"])
            for row in csv.DictReader(f)
            if row.get("train/samples_per_sec") and int(row["step"]) > 50
        ]
    return {
        "samples_per_sec": statistics.median(rates),
        "wall_s": wall,
        "page_faults_per_step": usage.ru_minflt / steps,
        "peak_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="tasks/world/tiny.yaml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            results = {}
            for keep in (False, True):
                output = Path(tmp) / f"round{r}-{'on' if keep else 'off'}"
                results[keep] = run(args.recipe, args.steps, keep, output)
                m = results[keep]
                print(
                    f"round {r + 1}, keep_freed_memory={'on ' if keep else 'off'}: "
                    f"{m['samples_per_sec']:.1f} samples/s, wall {m['wall_s']:.1f} s, "
                    f"{m['page_faults_per_step']:.0f} minor page faults per step, peak {m['peak_mib']:.0f} MiB",
                    flush=True,
                )
            ratios.append(results[True]["samples_per_sec"] / results[False]["samples_per_sec"])
            off, on = (Path(tmp) / f"round{r}-{s}" / "final" / "model.safetensors" for s in ("off", "on"))
            print(f"  same weights: {off.read_bytes() == on.read_bytes()}")
    print(f"median throughput ratio on / off over {args.rounds} rounds: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
