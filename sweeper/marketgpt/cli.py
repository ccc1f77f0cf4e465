"""`sweep train marketgpt`: a Typer sub-app the main CLI mounts as `train`.

    sweep train marketgpt --symbols BTCUSDT ETHUSDT --freq 1h --preset tiny [--max-steps N | --max-minutes M]
                          [--lake PATH] [--name NAME] [--resume]

`--symbols A B` works through the main CLI's `expand_list_options` (argv rewriting, as for `sweep run`);
--symbols may also be repeated or comma-separated. Torch is imported only when the command runs, so
mounting the app costs nothing. A SweepError prints one line on stderr and exits 2.
"""

from __future__ import annotations

from pathlib import Path

import typer

from sweeper.errors import SweepError, check_name

train_app = typer.Typer(help="Train the project's own models.", no_args_is_help=True)


@train_app.command("marketgpt")
def marketgpt(
    symbols: list[str] = typer.Option(..., "--symbols", help="Symbols to train on together."),
    freq: str | None = typer.Option(None, "--freq", help="Bar frequency (default: finest common one)."),
    preset: str = typer.Option("tiny", "--preset", help="tiny (CPU, minutes), small, base (GPU)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Total optimiser steps (preset default)."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop this call after M minutes."),
    lake: Path | None = typer.Option(None, "--lake", help="Candle lake (default $SWEEP_LAKE, else the demo)."),
    name: str | None = typer.Option(None, "--name", help="Checkpoint name under models/marketgpt/."),
    resume: bool = typer.Option(False, "--resume", help="Continue the checkpoint of --name."),
    horizon: int = typer.Option(1, "--horizon", help="The sweep's horizon: training stops before its origins."),
    vocab_size: int | None = typer.Option(None, "--vocab-size", help="Bins per OHLC component (preset: 1024)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads", help="CPU threads (0: torch's default; 1 suits a shared box)."),
) -> None:
    """Train MarketGPT on bars before the sweep's first validation origin; writes models/marketgpt/NAME."""
    try:
        from sweeper.marketgpt.train import DEFAULT_ROOT, train
        from sweeper.plan import Protocol

        out = None if name is None else DEFAULT_ROOT / check_name("model name", name)
        summary = train(
            [w for item in symbols for w in item.split(",") if w],
            freq,
            lake,
            preset,
            out,
            max_steps,
            max_minutes,
            resume=resume,
            protocol=Protocol(horizon=horizon),
            vocab_size=vocab_size,
            device=device,
            seed=seed,
            threads=threads or None,
        )
    except SweepError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    first = "-" if summary.first_loss is None else f"{summary.first_loss:.4f}"
    last = "-" if summary.last_loss is None else f"{summary.last_loss:.4f}"
    typer.echo(
        f"wrote {summary.out_dir}: {summary.steps_run} steps this run ({summary.steps} in all) on {summary.device}, "
        f"loss {first} -> {last}, {summary.minutes:.1f} min (bins {summary.tokenizer_seconds:.0f} s); "
        f"trained on bars up to {summary.trained_until}"
    )
