"""Lightning callbacks that make a training run fail loudly instead of finishing wrong (docs/reliability.md).

- :class:`NonFiniteGuard`: a non-finite loss, gradient or weight stops the run (or skips the step) before it is saved;
- :class:`StepCheckpoint`: every ``every_n_train_steps`` checkpoint is written, after its step's validation;
- :class:`Preemption`: SIGTERM/SIGUSR1 save the current step, requeue under SLURM and exit non-zero;
- :class:`RunAudit`: splits without labelled pixels stop the run; ``src.train`` checks max_steps and the
  validation schedule against it at the end (:func:`check_run`);
- :class:`RunReport`: the per-domain, per-class table of the last validation printed and written into the run
  directory when training ends (one log line per validation before that).
- :class:`StepProgress`: the global step out of ``max_steps``, it/s, ETA, loss and lr, as a bar on a terminal and as
  plain lines in a log file.
"""

from src.callbacks.audit import RunAudit, check_run
from src.callbacks.checkpoint import StepCheckpoint
from src.callbacks.errors import DataError, IncompleteRunError, NonFiniteTrainingError
from src.callbacks.nonfinite import NonFiniteGuard
from src.callbacks.preemption import Preempted, Preemption
from src.callbacks.progress import StepProgress
from src.callbacks.report import RunReport

__all__ = [
    "DataError",
    "IncompleteRunError",
    "NonFiniteGuard",
    "NonFiniteTrainingError",
    "Preempted",
    "Preemption",
    "RunAudit",
    "RunReport",
    "StepCheckpoint",
    "StepProgress",
    "check_run",
]
