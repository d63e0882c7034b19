"""What every config model shares: strictness and the shape of a name."""

from typing import Annotated

from pydantic import ConfigDict, Field

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
# Unknown keys are errors (a typo must not be ignored) and a loaded config never changes.
STRICT = ConfigDict(extra="forbid", frozen=True)
