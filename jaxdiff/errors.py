"""Every error jaxdiff raises on purpose, in one leaf module (it imports nothing of jaxdiff).

Each is something a user can cause or meet, and each message names the problem
and the fix. `jaxdiff.main` turns them into one `error:` line and a non-zero
exit instead of a traceback.
"""
from __future__ import annotations


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the fix."""


class NonFiniteLossError(RuntimeError):
  """Too many consecutive steps had non-finite gradients; the run stopped."""


class WeightsFileError(ValueError):
  """A weights file that is missing, truncated, of another format or of the wrong shapes."""


class MissingWeightsFileError(WeightsFileError, FileNotFoundError):
  """A weights file that is not where the config says."""


class DatasetFormatError(ValueError):
  """An example or a source file that does not have the shape/dtype/layout expected."""


class MissingDatasetError(FileNotFoundError):
  """The dataset named by the config has not been prepared in the data dir."""


class WorkdirInUseError(RuntimeError):
  """Another job holds the workdir's lock (one writer per workdir)."""


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (disk full, permissions, a lost filesystem)."""


# The errors a user causes or meets: `jaxdiff.main` reports them in one line, exit status 2.
USER_ERRORS = (ConfigError, NonFiniteLossError, WeightsFileError, DatasetFormatError,
               MissingDatasetError, WorkdirInUseError, CheckpointWriteError, FileNotFoundError,
               ValueError)
