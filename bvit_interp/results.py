"""Old home of ``Run``: a re-export of the run layer (``bvit_interp.runs``), kept for notebooks and scripts."""

from .atomic import atomic_write
from .runs import RESULTS_FORMAT, Run, RunExistsError, RunLockedError

__all__ = ["RESULTS_FORMAT", "Run", "RunExistsError", "RunLockedError", "atomic_write"]
