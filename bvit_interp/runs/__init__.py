"""The run layer: everything an analysis writes to disk goes through here (docs/CONVENTIONS.md, "Run layer").

``Run`` (``run.py``) creates, checks, locks, resumes and completes run directories; ``chunks.py`` holds the
resumable parts of long analyses; ``pointing.py``, ``featviz.py`` and ``pruning.py`` are the resumable
drivers of those analyses. Imports point down only: model <- data <- analysis <- runs <- commands / app.
"""

from .chunks import ArrayParts, Chunk, ChunkedTables, cached_arrays
from .lock import RunLockedError
from .run import PRODUCER, RESULTS_FORMAT, Run, RunExistsError, differences, is_run

__all__ = ["PRODUCER", "RESULTS_FORMAT", "ArrayParts", "Chunk", "ChunkedTables", "Run", "RunExistsError",
           "RunLockedError", "cached_arrays", "differences", "is_run"]
