"""Fine-tuning as searched knobs: tiny random checkpoints of Toto, Moirai, Kronos and MarketGPT on real candles.

One store of fine-tuned weights is shared by the whole module, so a job trained by one test is loaded,
not retrained, by the next (which is itself one of the rules tested).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest

from sweeper.backends import backend_class
from sweeper.cache import ForecastCache
from sweeper.data import Series
from sweeper.finetune.base import Windows
from sweeper.finetune.fit import FinetuneStore
from sweeper.finetune.settings import FinetuneSettings
from sweeper.finetune.tuner import Tuner
from sweeper.forecast import Forecaster
from sweeper.objective import Candidate, SymbolTask, mean_scores, objective
from sweeper.plan import Protocol, make_plan
from sweeper.search import optuna_report
from sweeper.space import load_space
from sweeper.workspace import Workspace
from tests.helpers import SHARED_LAKE, shared_series, storage_of
from tests.test_sweep import SWEEP_BIN, count_trials

BACKENDS = ("toto", "moirai", "kronos", "marketgpt")
SPACES = Path(__file__).resolve().parents[1] / "search_spaces" / "cpu-tiny"
PROTOCOL = Protocol(horizon=1, max_context=128, val_origins=30, test_origins=10)
BASE = {"num_samples": 16, "aggregation": "median", "context_length": 64}
TUNE = {
    "ft_steps": 24,
    "ft_lr": 3e-3,
    "ft_warmup": 0.0,
    "ft_schedule": "constant",
    "ft_context": 64,
    "ft_batch_size": 8,
    "ft_lora_rank": 0,
}
# A random MarketGPT already samples near the bins' spread and gains a few CRPS points from fine-tuning:
# 16 draws' noise (seed to seed) is larger than that, 128 draws' is not
MODEL_KNOBS = {
    "moirai": {"patch_size": 16},
    "toto": {},
    "kronos": {},
    "marketgpt": {"mode": "sample", "num_samples": 128},
}
# Moirai's random mixture starts near the naive spread; it needs more (smaller) steps to improve on it
PER_BACKEND = {"moirai": {"ft_steps": 96, "ft_lr": 1e-3, "ft_prediction": 1}, "toto": {}, "kronos": {}, "marketgpt": {}}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Two torch threads on two shared cores wait on each other; these tiny models train faster on one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def series() -> Series:
    return shared_series("BTCUSDT", "1h", last=600)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, series: Series) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ck")
    paths = {b: str(backend_class(b).init_checkpoint("tiny", root / b)) for b in BACKENDS if b != "marketgpt"}
    fit_kronos_tokenizer(paths["kronos"], series, int(make_plan(series, PROTOCOL).val[0]))
    paths["marketgpt"] = random_marketgpt(series, root)
    return paths


def random_marketgpt(series: Series, root: Path) -> str:
    """A tiny MarketGPT with random weights and real bins (64, fitted on the bars before the first
    validation origin of PROTOCOL's plan, as `sweep train` fits them)."""
    from sweeper.marketgpt.train import train
    from tests.marketgpt_support import write_lake

    lake = write_lake(root / "mg_lake", [series])
    out = root / "marketgpt"
    train([series.symbol], series.freq, lake, "tiny", out, max_steps=0, protocol=PROTOCOL, vocab_size=64,
          progress=False)  # fmt: skip
    return str(out)


def fit_kronos_tokenizer(checkpoint: str, series: Series, before: int, steps: int = 200) -> None:
    """Kronos fine-tunes its predictor on a FROZEN tokenizer, and a random tokenizer's decode(encode(x)) is
    noise, so no predictor could learn prices through it. The test checkpoint gets a tokenizer fitted with
    the package's own objective (reconstruction of both decoders + the BSQ loss of `KronosTokenizer.forward`)
    on bars before the first validation origin; the predictor stays random."""
    import torch

    from sweeper.finetune.kronos import KronosFinetuner

    tuner = KronosFinetuner(checkpoint, torch.device("cpu"))
    s = FinetuneSettings(context=64)
    windows = Windows.before([series], series.ts[before], 80)
    tok = tuner.tokenizer.requires_grad_(True).train()
    opt = torch.optim.AdamW(tok.parameters(), 2e-3)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for i in range(steps):
            x, _ = tuner.collate([windows.draw(1, i * 16 + j) for j in range(16)], s, {})
            (z_pre, z), bsq_loss, _, _ = tok(x)
            loss = (torch.nn.functional.mse_loss(z_pre, x) + torch.nn.functional.mse_loss(z, x) + bsq_loss) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
    tok.eval().save_pretrained(Path(checkpoint) / "tokenizer")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


def task_for(series: Series, checkpoints: dict[str, str], run_dir: Path) -> SymbolTask:
    """A fresh process's view of one run folder: new forecaster, same forecast cache and weights store."""
    cache = ForecastCache(run_dir / "cache")
    fc = Forecaster(cache, seed=0, device="cpu", checkpoints=checkpoints)
    spaces = {b: load_space(b, SPACES) for b in BACKENDS}
    return SymbolTask(series, make_plan(series, PROTOCOL), spaces, fc)


def cand(backend: str, **tune: object) -> Candidate:
    params = {**BASE, **MODEL_KNOBS[backend], **tune}
    return Candidate(backend, params, draws=int(params["num_samples"]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_finetuning_lowers_validation_crps_of_a_random_checkpoint(backend, series, checkpoints, run_dir) -> None:
    task = task_for(series, checkpoints, run_dir)
    pretrained = mean_scores(task.scores(cand(backend), "val"))["crps"]
    tune = {**TUNE, **PER_BACKEND[backend]}
    tuned = mean_scores(task.scores(cand(backend, **tune), "val"))["crps"]
    assert tuned < pretrained, f"{backend}: fine-tuned {tuned:.2f} vs pretrained {pretrained:.2f}"
    folder = task.forecaster.finetune_jobs(series, task.plan, "val", backend, cand(backend, **tune).params)[0]
    assert (run_dir / "finetuned" / folder.key() / "finetune.json").is_file()
    # the weights are a real checkpoint of the backend: it loads them like any other
    backend_class(backend)(str(run_dir / "finetuned" / folder.key()), "cpu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_trial_with_the_same_finetuning_knobs_trains_nothing(backend, series, checkpoints, run_dir) -> None:
    tune = {**TUNE, **PER_BACKEND[backend]}
    first = task_for(series, checkpoints, run_dir)
    first.scores(cand(backend, **tune), "val")  # trained by the test above, or now
    again = task_for(series, checkpoints, run_dir)
    again.scores(cand(backend, **tune), "val")
    assert again.forecaster.tuner.trained == 0 and again.forecaster.model_calls == 0
    # a knob that changes training is a new job
    again.scores(cand(backend, **{**tune, "ft_steps": 4}), "val")
    assert again.forecaster.tuner.trained == 1


# Random tiny Moirai is left out: with adapters its training NLL falls while its validation CRPS rises
# (README, Fine-tuning), so it has no rule to prove here beyond the checkpoint rules below
@pytest.mark.parametrize("backend", ["toto", "kronos", "marketgpt"])
def test_lora_finetuning_lowers_validation_crps_of_a_random_checkpoint(backend, series, checkpoints, run_dir) -> None:
    task = task_for(series, checkpoints, run_dir)
    pretrained = mean_scores(task.scores(cand(backend), "val"))["crps"]
    tuned = mean_scores(task.scores(cand(backend, **{**TUNE, "ft_lora_rank": 8}), "val"))["crps"]
    assert tuned < pretrained, f"{backend}: LoRA-tuned {tuned:.2f} vs pretrained {pretrained:.2f}"


def named_weights(backend: str, checkpoint: str | Path) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """A checkpoint's parameters by name, with the names inside its first block and its later blocks."""
    import torch

    from sweeper.finetune.base import finetuner_class

    tuner = finetuner_class(backend)(str(checkpoint), torch.device("cpu"))
    inputs, blocks, head = tuner.parts()
    root = torch.nn.ModuleList([*inputs, *blocks, *head])
    weights = {n: p.detach().numpy().copy() for n, p in root.named_parameters()}
    first = [f"{len(inputs)}.{n}" for n, _ in blocks[0].named_parameters()]
    later = [f"{len(inputs) + i}.{n}" for i in range(1, len(blocks)) for n, _ in blocks[i].named_parameters()]
    return weights, first, later


@pytest.mark.parametrize("backend", BACKENDS)
def test_lora_weights_are_the_backends_checkpoint_with_rank_r_updates_on_the_adapted_blocks(
    backend, series, checkpoints, tmp_path
) -> None:
    first = int(make_plan(series, PROTOCOL).val[0])
    tuner = Tuner(FinetuneStore(tmp_path), seed=0, device="cpu")
    knobs = {**BASE, **MODEL_KNOBS[backend], **TUNE, **PER_BACKEND[backend], "ft_steps": 6}
    job = tuner.job(backend, checkpoints[backend], "tiny", series, first, {**knobs, "ft_lora_rank": 2,
                    "ft_freeze": "first_1"})  # fmt: skip
    assert job.key() != tuner.job(backend, checkpoints[backend], "tiny", series, first, knobs).key()
    path = tuner.checkpoint(job)
    backend_class(backend)(str(path), "cpu")  # a real checkpoint of the backend
    base, in_first, in_later = named_weights(backend, checkpoints[backend])
    tuned, _, _ = named_weights(backend, path)
    assert tuned.keys() == base.keys()
    changed = {n for n in base if not np.array_equal(base[n], tuned[n])}
    assert changed & set(in_later) and not changed & set(in_first)  # block 0 is frozen, the later ones adapted
    for n in changed & set(in_later):
        delta = tuned[n] - base[n]
        assert n.endswith("weight") and delta.ndim == 2, n  # linear weights only: norms and biases stay
        sv = np.linalg.svd(delta.astype(np.float64), compute_uv=False)
        assert sv[2] < 1e-4 * sv[0], (n, sv[:4])  # rank 2, up to float32 rounding of W + BA


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_merged_weights_compute_what_the_adapted_model_computes(backend, series, checkpoints) -> None:
    import torch

    from sweeper.finetune import lora
    from sweeper.finetune.base import finetuner_class

    s = FinetuneSettings.from_knobs({**TUNE, **PER_BACKEND[backend], "ft_lora_rank": 4})
    tuner = finetuner_class(backend)(checkpoints[backend], torch.device("cpu"))
    module = tuner.module(s).eval()
    module.log = lambda *args, **kwargs: None  # training_step logs to a trainer; there is none here
    windows = Windows.before([series], series.ts[400], s.context + tuner.prediction(s))
    batch = tuner.collate([windows.draw(0, i) for i in range(4)], s, MODEL_KNOBS[backend])

    def loss() -> float:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return float(module.training_step(batch, 0).detach())

    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    untouched = loss()
    lora.adapt(module, tuner.parts(), s)
    for name, p in module.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(1))
    adapted = loss()
    with lora.merged(module):
        merged = loss()
        assert {n for n, _ in module.named_parameters()} == set(before)  # the backend's own layers
    assert adapted != untouched and merged == pytest.approx(adapted, rel=1e-5)
    # and the base weights under the adapters are back bit for bit
    after = {n.replace(".base_layer", ""): p for n, p in module.named_parameters() if "lora_" not in n}
    assert all(torch.equal(after[n], p) for n, p in before.items())


def test_without_adapters_the_lora_knobs_stay_out_of_the_key() -> None:
    plain = FinetuneSettings(steps=4)
    assert not any("lora" in k for k in plain.knobs())
    assert FinetuneSettings(steps=4, lora_alpha=32.0).knobs() == plain.knobs()
    head_only = FinetuneSettings(steps=4, lora_rank=8, freeze="head_only")
    assert head_only.knobs() == {**plain.knobs(), "ft_freeze": "head_only"}  # no block to adapt
    assert FinetuneSettings(steps=4, lora_rank=8).knobs()["ft_lora_rank"] == 8


@pytest.mark.parametrize("backend", ["toto", "marketgpt"])
def test_no_training_window_reaches_the_origin_it_is_scored_on(backend, series, checkpoints, tmp_path) -> None:
    plan = make_plan(series, PROTOCOL)
    first = int(plan.val[0])
    windows = Windows.before([series], series.ts[first], 80)
    assert all(t.max() < series.ts[first] for t in windows.ts)
    drawn = [windows.draw(0, i)[1] for i in range(200)]
    assert max(t.max() for t in drawn) < series.ts[first]

    def weights(s: Series, store: Path) -> tuple[str, bytes]:
        tuner = Tuner(FinetuneStore(store), seed=0, device="cpu")
        job = tuner.job(backend, checkpoints[backend], "tiny", s, first, {**BASE, **TUNE, "ft_steps": 6})
        return job.key(), (tuner.checkpoint(job) / "model.safetensors").read_bytes()

    def with_bars(rows: slice) -> Series:
        values = series.ohlcv.copy()
        values[rows, :4] *= 10.0
        return Series(series.symbol, series.freq, series.asset_class, series.ts, values, series.source)

    key, real = weights(series, tmp_path / "a")
    poisoned_key, poisoned = weights(with_bars(slice(first, None)), tmp_path / "b")
    assert (key, real) == (poisoned_key, poisoned)  # bars at or after the origin change nothing
    moved_key, moved = weights(with_bars(slice(first - 80, first)), tmp_path / "c")
    assert moved_key != key and moved != real  # and the check can fail: the bars just before it are trained on


def test_walk_forward_refits_each_block_on_bars_before_it(series, checkpoints, run_dir) -> None:
    task = task_for(series, checkpoints, run_dir)
    params = cand("toto", **TUNE, ft_refit_every=10).params
    jobs = task.forecaster.finetune_jobs(series, task.plan, "val", "toto", params)
    firsts = task.plan.val[::10]
    assert [j.windows.cut for j in jobs] == [series.ts[o] for o in firsts]
    assert len({j.key() for j in jobs}) == 3
    f = task.forecast(Candidate("toto", params, 16), "val")
    assert f.samples.shape == (30, 16, 1)


def test_a_finetuning_trial_reports_validation_at_each_rung_and_can_be_pruned(series, checkpoints, run_dir) -> None:
    task = task_for(series, checkpoints, run_dir)
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1e-9))  # prunes any report
    fixed = {**cand("kronos", **{**TUNE, "ft_steps": 20}).params}  # a point of the cpu-tiny space
    study.enqueue_trial(fixed)
    task.spaces = {"kronos": load_space("kronos", SPACES)}
    study.optimize(lambda t: objective(t, task, "kronos", ("crps",), optuna_report(t)), n_trials=1)
    trial = study.trials[0]
    assert trial.state.name == "PRUNED"
    assert list(trial.intermediate_values) == [FinetuneSettings.from_knobs(fixed).rungs()[0]]
    kept = optuna.create_study()
    kept.enqueue_trial(fixed)
    kept.optimize(lambda t: objective(t, task, "kronos", ("crps",), optuna_report(t)), n_trials=1)
    assert list(kept.trials[0].intermediate_values) == FinetuneSettings.from_knobs(fixed).rungs() == [5, 10, 20]
    assert kept.trials[0].state.name == "COMPLETE"


@pytest.mark.parametrize(
    ("old", "new"),
    [("finetune_epochs", "ft_steps"), ("finetune_lr", "ft_lr"), ("freeze_blocks", "ft_freeze"),
     ("finetune_every", "ft_refit_every")],
)  # fmt: skip
def test_a_space_naming_a_retired_marketgpt_knob_names_its_replacement(old, new, sweep, checkpoints, tmp_path) -> None:
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "naive.yaml").write_text((SPACES / "naive.yaml").read_text())
    text = (SPACES / "marketgpt.yaml").read_text()
    (spaces / "marketgpt.yaml").write_text(text + f"  {old}: {{type: categorical, choices: [1], default: 1}}\n")
    ck = f"marketgpt={checkpoints['marketgpt']}"
    result = sweep("run", "--symbols", "BTCUSDT", "--lake", SHARED_LAKE, "--freq", "1h", "--backends", "marketgpt",
                   "--checkpoint", ck, "--spaces", spaces, "--out", tmp_path)  # fmt: skip
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert old in result.stderr and f"use {new}" in result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("knob", "why"),
    [("ft_freeze=first_9", "has only 2 blocks"), ("ft_context=100000", "longer than the data before the cut"),
     ("ft_lora_rank=-1", "ft_lora_rank must be >= 0"), ("ft_lora_alpha=0", "ft_lora_alpha must be > 0"),
     ("ft_lora_rank=4 ft_freeze=first_2", "none is left to adapt")],
)  # fmt: skip
def test_untrainable_finetuning_knobs_are_one_line_and_write_nothing(knob, why, sweep, checkpoints, tmp_path) -> None:
    result = sweep("finetune", "kronos", "--symbols", "BTCUSDT", "--lake", SHARED_LAKE, "--freq", "1h", "--checkpoint",
                   checkpoints["kronos"], "--set", "ft_steps=4", *knob.split(), "--out", tmp_path)  # fmt: skip
    assert result.exit_code == 2 and why in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.rglob("*")) == []


def test_sweep_finetune_writes_a_checkpoint_the_backend_loads(sweep, checkpoints, tmp_path) -> None:
    out = tmp_path / "models" / "moirai" / "ft"
    result = sweep("finetune", "moirai", "--symbols", "BTCUSDT", "ETHUSDT", "--lake", SHARED_LAKE, "--freq", "1h",
                   "--checkpoint", checkpoints["moirai"], "--set", "ft_steps=4", "ft_context=64", "ft_lora_rank=2",
                   "--out", tmp_path, "--name", "ft")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    meta = json.loads((out / "finetune.json").read_text())
    assert meta["symbols"] == ["BTCUSDT", "ETHUSDT"] and meta["settings"]["ft_steps"] == 4
    assert meta["settings"]["ft_lora_rank"] == 2  # trained through adapters, saved merged
    backend_class("moirai")(str(out), "cpu")


def test_killed_finetuning_sweep_resumes_and_its_promoted_config_reproduces(sweep, checkpoints, tmp_path) -> None:
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "naive.yaml").write_text((SPACES / "naive.yaml").read_text())
    toto = (SPACES / "toto.yaml").read_text().replace("choices: [0, 20, 40], default: 0", "choices: [6], default: 6")
    (spaces / "toto.yaml").write_text(toto)
    run = ["run", "--symbols", "BTCUSDT", "--lake", str(SHARED_LAKE), "--freq", "1h", "--backends", "toto",
           "--checkpoint", f"toto={checkpoints['toto']}", "--spaces", str(spaces), "--val-origins", "30",
           "--test-origins", "10", "--trials", "2", "--run-id", "ft", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(
        [*SWEEP_BIN, *run], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    db, store = tmp_path / "results" / "ft" / "study.journal", tmp_path / "results" / "ft" / "finetuned"
    deadline = time.time() + 120
    while time.time() < deadline and (not db.exists() or count_trials(db) < 1):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the next trial is fine-tuning by now (each one trains)
    proc.communicate(timeout=60)
    before = {t.number: t.params for t in optuna.load_study(study_name="BTCUSDT--toto", storage=storage_of(db)).trials
              if t.state.name == "COMPLETE"}  # fmt: skip
    assert len(before) == 1
    # a training cut short leaves only its temporary folder: every keyed folder is complete
    assert all((p / "finetune.json").is_file() for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))
    resumed = subprocess.run(
        [*SWEEP_BIN, "run", "--resume", "ft", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    study = optuna.load_study(study_name="BTCUSDT--toto", storage=storage_of(db))
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 2
    assert all(study.trials[n].params == p and study.trials[n].state.name == "COMPLETE" for n, p in before.items())
    cfg = json.loads((tmp_path / "hyperparams" / "ft" / "BTCUSDT.json").read_text())
    tuned = cfg["backends"]["toto"]["finetune"]
    assert tuned["knobs"]["ft_steps"] == 6 and (Path(tuned["test"][0]["weights"]) / "model.safetensors").is_file()
    assert np.datetime64(tuned["test"][0]["cut"]) > np.datetime64(tuned["val"][0]["cut"])

    promoted = sweep("promote", "ft", "--out", tmp_path, "--symbols", "BTCUSDT")
    assert promoted.exit_code == 0 and Workspace(tmp_path).best_configs(), promoted.stdout
    check = sweep("eval", "--check", "--out", tmp_path)
    assert check.exit_code == 0, check.stdout + check.stderr


@pytest.fixture(scope="module")
def tuned_run(checkpoints: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep of one toto trial fine-tuned walk-forward (blocks of 10 origins: two test blocks)."""
    from typer.testing import CliRunner

    from sweeper.cli import app, expand_list_options

    out = tmp_path_factory.mktemp("live")
    spaces = out / "spaces"
    spaces.mkdir()
    (spaces / "naive.yaml").write_text((SPACES / "naive.yaml").read_text())
    toto = (SPACES / "toto.yaml").read_text().replace("choices: [0, 20, 40], default: 0", "choices: [6], default: 6")
    (spaces / "toto.yaml").write_text(toto + "  ft_refit_every: {type: categorical, choices: [10], default: 10}\n")
    args = ["run", "--symbols", "BTCUSDT", "--lake", SHARED_LAKE, "--freq", "1h", "--backends", "toto",
            "--checkpoint", f"toto={checkpoints['toto']}", "--spaces", spaces, "--val-origins", 30,
            "--test-origins", 20, "--trials", 1, "--run-id", "live", "--out", out]  # fmt: skip
    result = CliRunner().invoke(app, expand_list_options([str(a) for a in args]), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out / "hyperparams" / "live" / "BTCUSDT.json"


def test_a_live_forecast_of_a_finetuned_config_uses_the_last_blocks_weights(tuned_run, checkpoints, tmp_path) -> None:
    from sweeper import load_config
    from tests.helpers import bars_frame

    cfg = json.loads(tuned_run.read_text())
    rec = cfg["backends"]["toto"]
    last = rec["finetune"]["test"][-1]
    assert len(rec["finetune"]["test"]) == 2 and last["cut"] > rec["finetune"]["test"][0]["cut"]
    series = shared_series("BTCUSDT", "1h")
    bars = bars_frame(series).head(len(series) - 3)
    origin, n = np.array([len(series) - 3]), int(rec["draws"])

    def draws(checkpoint: str) -> np.ndarray:
        fc = Forecaster(ForecastCache(None), cfg["seed"], "cpu", {"toto": checkpoint})
        got = fc.draw(series, origin, 1, "toto", rec["params"], n)[0, : int(rec["params"]["num_samples"])]
        return np.sort(got.astype(np.float64), axis=0)

    said: list[str] = []
    live = load_config(tuned_run, backend="toto", device="cpu", cache=tmp_path / "c", say=said.append)
    got = live.forecast(bars, draws=True).draws
    np.testing.assert_array_equal(got, draws(last["weights"]))
    assert not np.array_equal(got, draws(checkpoints["toto"])) and said == []  # not the base; nothing re-fitted
    weights = (Path(last["weights"]) / "model.safetensors").read_bytes()

    shutil.rmtree(tuned_run.parents[2] / "results" / "live" / "finetuned")  # the run folder's weights are gone
    again = load_config(tuned_run, backend="toto", device="cpu", cache=tmp_path / "c", say=said.append)
    assert len(said) == 1 and "re-fitting" in said[0]
    assert (tmp_path / "c" / last["key"] / "model.safetensors").read_bytes() == weights
    np.testing.assert_array_equal(again.forecast(bars, draws=True).draws, got)
    load_config(tuned_run, backend="toto", device="cpu", cache=tmp_path / "c", say=said.append)
    assert len(said) == 1  # the re-fitted weights are kept under their key: the next forecast loads them


def test_refitting_into_a_folder_that_cannot_be_made_is_one_line(tuned_run, sweep, tmp_path, monkeypatch) -> None:
    import tempfile

    cfg = json.loads(tuned_run.read_text())
    rec = cfg["backends"]["toto"]
    cfg["chosen"] = {"backend": "toto", "params": rec["params"], "draws": rec["draws"]}  # as if toto had won
    promoted = Workspace(tmp_path).best_path("BTCUSDT", "1h", 1)
    promoted.parent.mkdir(parents=True)
    promoted.write_text(json.dumps(cfg))
    blocker = tmp_path / "file"
    blocker.write_text("")
    shutil.rmtree(tuned_run.parents[2] / "results" / "live" / "finetuned", ignore_errors=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the live re-fit's folder would be inside a file
    r = sweep("forecast", "--symbols", "BTCUSDT", "--out", tmp_path, "--device", "cpu")
    assert r.exit_code == 2 and "cannot write fine-tuned weights" in r.stderr, r.output
    assert len(r.stderr.strip().splitlines()) == 1
    monkeypatch.setattr(tempfile, "tempdir", str(blocker))  # eval re-fits into a temporary folder
    r = sweep("eval", "--check", "--out", tmp_path, "--device", "cpu")
    assert r.exit_code == 2 and "cannot make a temporary folder for fine-tuned weights" in r.stdout, r.output
    assert "Traceback" not in r.output


@pytest.mark.xdist_group("ray")  # one Ray at a time on a 2-core machine
def test_ray_stops_a_finetuning_trial_at_a_training_rung_before_it_trains_on(series, checkpoints, tmp_path) -> None:
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    from sweeper.engines.ray_tune import CHUNK, MEAN, TrialSpec, trainable

    class StopAtTheFirstReport(FIFOScheduler):
        def on_trial_result(self, tune_controller: object, trial: object, result: dict) -> str:
            return TrialScheduler.STOP

    space = load_space("toto", SPACES)
    params = {**BASE, "num_samples": 32, **TUNE, "ft_steps": 20, "ft_weight_decay": 0.01, "ft_freeze": "none"}
    plan = make_plan(series, PROTOCOL)
    chunks = len(task_for(series, checkpoints, tmp_path / "driver").chunks("val"))

    def tuned(scheduler: TrialScheduler, run: Path) -> tuple[dict, list[bool]]:
        spec = TrialSpec(str(run), series, plan, {"toto": space}, "toto", "crps", str(run / "cache"), 1 << 28, 0,
                         "cpu", tuple(sorted(checkpoints.items())), 1)  # fmt: skip
        grid = tune.Tuner(
            tune.with_parameters(trainable, spec=spec),
            param_space=space.optuna_params(params),
            tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=1),
            run_config=tune.RunConfig(storage_path=str(run / "ray"), verbose=0),
        ).fit()
        assert not grid.errors
        fc = Forecaster(ForecastCache(run / "cache"), seed=0, checkpoints=checkpoints)
        job = fc.finetune_jobs(series, plan, "val", "toto", params)[0]
        return grid[0].metrics, [fc.tuner.store.get(job.key(r)) is not None for r in job.settings.rungs()]

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stopped, trained = tuned(StopAtTheFirstReport(), tmp_path / "stopped")
        assert stopped[CHUNK] == 1 and trained == [True, False, False]  # 5 of 20 steps, then no further
        complete, trained = tuned(FIFOScheduler(), tmp_path / "complete")
    finally:
        ray.shutdown()
    assert complete[CHUNK] == chunks and f"{MEAN}crps" in complete and trained == [True, True, True]
