"""The engines that fill a sweep's studies with trials, behind one interface (`Engine`, sweeper/engines/base.py):

- `local.OptunaEngine` (the default): this process, one trial after another;
- `parallel.ParallelEngine` (`--jobs N`): N worker processes on each study in turn;
- `ray_tune.RayEngine` (`--engine ray`): Ray Tune with OptunaSearch and ASHA, locally or on a cluster.

Every engine runs the same studies (sweeper/search.py: one per symbol and backend, built from the run's
`StudySettings`), so trials.parquet, the configs and the selection step do not depend on the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sweeper.engines.base import Engine
from sweeper.engines.local import OptunaEngine
from sweeper.engines.parallel import ParallelEngine
from sweeper.objective import SymbolTask
from sweeper.search import StudySettings

if TYPE_CHECKING:
    from sweeper.sweep import RunRequest

SCHEDULERS = ("asha", "fifo")  # Ray Tune trial schedulers: ASHA early stopping, or every trial to its end


def engine_for(req: RunRequest, settings: StudySettings, tasks: list[SymbolTask], ray_folder: Path) -> Engine:
    """The engine the request asks for; `ray_folder` takes Tune's own files (results/<run_id>/ray)."""
    if req.engine == "ray":
        from sweeper.engines.ray_tune import RayEngine, RayOptions  # importing Ray takes seconds: only for it

        opts = RayOptions(req.workers, req.ray_address, req.gpus_per_trial, ray_folder, req.scheduler or SCHEDULERS[0])
        return RayEngine(settings, opts)
    if req.jobs > 1:
        return ParallelEngine(settings, tasks, req.jobs)
    return OptunaEngine(settings)
