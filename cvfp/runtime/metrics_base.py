"""What every metrics model shares: unknown keys are errors, the written dict keeps the
writer's keys only (an Optional key the stage did not set stays out of the file), and reading
a file names the file and the key that does not fit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound="Metrics")


class Metrics(BaseModel):
    # Fields are declared in the order the file has them: the dump keeps that order.
    model_config = ConfigDict(extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        """The content of the file (json.dumps of it gives the file's bytes, cvfp.runtime.utils.write_json)."""
        return self.model_dump(exclude_unset=True)


class MetricsFileError(ValueError):
    """A metrics file that does not parse or does not match its model."""


def parse(model: type[M], obj: Any, where: str) -> M:
    try:
        return model.model_validate(obj)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors()
        )
        raise MetricsFileError(f"{where} does not match {model.__name__}: {problems}") from None


def read(model: type[M], path: str | Path) -> M:
    """The file at `path` as `model`; an error names the file and each key that does not fit."""
    try:
        obj = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise MetricsFileError(f"{path} is not valid JSON: {err}") from None
    return parse(model, obj, str(path))
