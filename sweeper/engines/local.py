"""The default engine: this process runs each study's trials in turn (`study.optimize`), and a stop signal
or a machine fault leaves the trial it cut short queued again for `--resume`."""

from __future__ import annotations

import optuna

from sweeper.engines.base import Engine, OnTrial
from sweeper.errors import machine_fault
from sweeper.objective import SymbolTask, objective
from sweeper.search import (
    CAUGHT,
    INTERRUPTS,
    StudySettings,
    finished,
    optuna_report,
    prepare_study,
    record_failure,
    requeue,
)


def run_study(task: SymbolTask, backend: str, s: StudySettings, on_trial: OnTrial | None = None) -> optuna.Study:
    """Run the trials still missing from the study's budget."""
    study = prepare_study(task, backend, s)
    remaining = s.budget.trials - finished(study)
    if remaining > 0:
        callbacks = [lambda st, _t: on_trial(st)] if on_trial else None

        def interruptible(trial: optuna.Trial) -> float | tuple:
            INTERRUPTS.in_trial, INTERRUPTS.cut = True, False
            try:
                INTERRUPTS.check()
                return objective(trial, task, backend, s.objectives, optuna_report(trial) if s.prunes else None)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: like a killed process, a resume redoes this trial
                INTERRUPTS.pending = None
                requeue(study, trial)
                raise
            except CAUGHT as exc:  # a failed trial; Optuna only logs why, so keep the reason with the trial
                record_failure(trial, exc)
                raise
            except Exception as exc:
                if machine_fault(exc) is not None:  # the machine, not the knobs: never counted as a failure
                    requeue(study, trial)
                raise
            finally:
                INTERRUPTS.in_trial = False

        INTERRUPTS.in_optimize = True
        try:
            study.optimize(
                interruptible,
                n_trials=remaining,
                timeout=s.budget.timeout,
                callbacks=callbacks,
                catch=CAUGHT,
            )
        finally:
            INTERRUPTS.in_optimize = INTERRUPTS.cut = False
        INTERRUPTS.check()
    return study


class OptunaEngine(Engine):
    """This process, one trial after another."""

    def run(self, task: SymbolTask, backend: str, on_trial: OnTrial | None = None) -> optuna.Study:
        return run_study(task, backend, self.settings, on_trial)
