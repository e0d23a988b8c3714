"""The spec errors, re-exported from the one error tree in `lmsweep.errors` (see there)."""
from lmsweep.errors import (  # noqa: F401
    BadInput,
    ExperimentError,
    KeyProblems,
    LmsweepError,
    SpecError,
    SpecErrors,
    UsageError,
    did_you_mean,
    raise_all,
)
