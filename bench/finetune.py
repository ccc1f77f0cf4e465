"""Fine-tuning speed and memory per backend on this machine, with random checkpoints of each preset.

Each (backend, preset) runs in a fresh interpreter (its peak memory is its own): a random checkpoint in
the real format (MarketGPT's with its bins fitted on the shared lake's 1h bars, as `sweep models init`
does), then the sweep's fine-tuning driver (`sweeper.finetune.fit`) on real BTCUSDT 1h windows before a
cut, twice: `warm` steps and `warm + steps` steps. Steps per second is `steps` over the difference of the
two wall times, so loading and the Trainer's start-up cancel out (a one-step fit before them pays the
imports).
`python -m bench.finetune` prints a table; `make bench` (bench/run.py) calls `print_table`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED_LAKE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ohlcv"
BACKENDS = ("toto", "moirai", "kronos", "marketgpt")
KNOBS = {"ft_context": 128, "ft_batch_size": 4, "ft_lr": 1e-4}
WINDOW = {"marketgpt": {"ft_context": 112}}  # its tiny preset sees 128 returns: context + its 16-bar target fit
STEPS = {"tiny": 20, "small": 3}


def bench_finetune(backend: str, preset: str, warm: int = 2) -> dict[str, Any]:
    import numpy as np
    import torch

    from sweeper.backends import backend_class
    from sweeper.data import load
    from sweeper.finetune.base import Windows, finetuner_class
    from sweeper.finetune.fit import FinetuneJob, FinetuneStore, fit
    from sweeper.finetune.settings import FinetuneSettings

    torch.set_num_threads(1)
    os.environ["SWEEP_LAKE"] = str(SHARED_LAKE)  # MarketGPT's random checkpoint fits its bins on this lake
    series = load(SHARED_LAKE, ["BTCUSDT"], "1h")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(backend_class(backend).init_checkpoint(preset, Path(tmp) / "base"))
        seconds = []
        for steps in (1, warm, warm + STEPS[preset]):  # the first pays the imports, and is not counted
            s = FinetuneSettings.from_knobs({**KNOBS, **WINDOW.get(backend, {}), "ft_steps": steps})
            length = s.context + finetuner_class(backend).window_prediction(ckpt, s)
            windows = Windows.before(series, series[0].ts[-1000], length)
            job = FinetuneJob(backend, ckpt, None, s, windows, {}, 0)
            start = time.perf_counter()
            fit(job, FinetuneStore(Path(tmp) / f"store{steps}"), torch.device("cpu"))
            seconds.append(time.perf_counter() - start)
    rate = STEPS[preset] / (seconds[2] - seconds[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"backend": backend, "preset": preset, "steps_per_s": float(np.round(rate, 3)), "peak_mib": round(peak)}


def _fresh(backend: str, preset: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.finetune", "--child", backend, preset], capture_output=True, text=True
    )
    if out.returncode:
        return {"backend": backend, "preset": preset, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(backends: tuple[str, ...] = BACKENDS, presets: tuple[str, ...] = ("tiny", "small")) -> None:
    print(
        f"windows of {KNOBS['ft_context']} bars (marketgpt {WINDOW['marketgpt']['ft_context']}) + prediction, "
        f"batch {KNOBS['ft_batch_size']}, one torch thread"
    )
    print(f"{'backend':<8} {'preset':<6} {'steps/s':>8} {'peak MiB':>9}")
    for backend in backends:
        for preset in presets:
            r = _fresh(backend, preset)
            if "error" in r:
                print(f"{backend:<8} {preset:<6} error: {r['error']}")
                continue
            print(f"{backend:<8} {preset:<6} {r['steps_per_s']:>8.3f} {r['peak_mib']:>9}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "PRESET"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(bench_finetune(*args.child)))
    else:
        print_table()


if __name__ == "__main__":
    main()
