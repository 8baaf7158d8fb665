"""params.yaml: `Params` (the whole file: the sections of cvfp/params_sections.py and the rules
across them), its loading and its errors.

`load_params(path)` returns a validated `Params`; any problem raises `ParamsError`
whose message names the key path, the bad value (cut to ~200 characters) and what is allowed.
The YAML is read by `yaml_load`: duplicate keys fail (naming the line), and `1e-3` is a
number (YAML 1.2), not text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from cvfp.params_sections import (
    BaselineParams,
    ChecksParams,
    CompareParams,
    DataParams,
    DivergenceParams,
    DiversityParams,
    GenerateParams,
    Heads,
    MaterializeParams,
    ModelParams,
    Objective,
    OrchestrationParams,
    Phase1Params,
    Phase2Params,
    ReconstructionParams,
    RuntimeParams,
    Section,
    Seed,
    SplitParams,
    TokenizerParams,
)

# The params API: the whole file, its sections (defined in params_sections.py) and loading.
__all__ = [
    "BaselineParams",
    "ChecksParams",
    "CompareParams",
    "DataParams",
    "DivergenceParams",
    "DiversityParams",
    "GenerateParams",
    "Heads",
    "MaterializeParams",
    "ModelParams",
    "Objective",
    "OrchestrationParams",
    "Params",
    "ParamsError",
    "Phase1Params",
    "Phase2Params",
    "ReconstructionParams",
    "RuntimeParams",
    "Seed",
    "SplitParams",
    "TokenizerParams",
    "arm_params",
    "load_params",
    "parse_params",
    "set_dotted",
    "yaml_load",
]


# Keys that change how much memory a stage uses and nothing else (tests/test_fixed_costs.py):
# left out of every recorded copy of the params.
MEMORY_ONLY: dict[str, set[str]] = {"orchestration": {"cstar_in_memory_mb"}}


class Params(Section):
    seed: Seed
    deterministic: bool
    data: DataParams
    tokenizer: TokenizerParams
    split: SplitParams
    model: ModelParams
    phase1: Phase1Params
    checks: ChecksParams
    materialize: MaterializeParams
    phase2: Phase2Params
    baselines: BaselineParams
    generate: GenerateParams
    orchestration: OrchestrationParams
    compare: CompareParams
    runtime: RuntimeParams = Field(default_factory=RuntimeParams)
    # (params file, overrides) this was loaded from: a stage rereads it at the end to refuse
    # outputs when the file changed while it ran (tasks.guard.params_guard).
    _source: tuple[str, dict] | None = PrivateAttr(default=None)

    def record(self, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """The params as outputs record them (checkpoints, params.json, the report): every
        key but the memory-only ones (MEMORY_ONLY), so those never change an output byte."""
        return self.model_dump(mode=mode, exclude=MEMORY_ONLY)

    def model_copy(self, *, update=None, deep: bool = False) -> Params:
        copy = super().model_copy(update=update, deep=deep)
        if update:  # no longer what the file says
            copy._source = None
        return copy

    @model_validator(mode="after")
    def _cross(self) -> Params:
        # Arm overrides must name existing keys (their values are validated per arm by
        # `arm_params` before a comparison starts).
        dumped = self.model_dump()
        for name, overrides in self.compare.arms.items():
            for key in overrides:
                node = dumped
                for part in key.split("."):
                    if not isinstance(node, dict) or part not in node:
                        raise ValueError(f"compare.arms.{name}: {key!r} is not a params key")
                    node = node[part]
        if (
            self.phase2.heads == "per_block"
            and len(self.phase2.block_weights) != self.model.num_blocks
        ):
            raise ValueError(
                f"phase2.block_weights has {len(self.phase2.block_weights)} weights but "
                f"model.layer_structure has {self.model.num_blocks} blocks; give one weight per block"
            )
        return self


class ParamsError(ValueError):
    """A params.yaml problem; the message names the key, the value and what is allowed."""


MAX_VALUE_CHARS = 200


def _cut(value: Any) -> str:
    """repr(value), cut to MAX_VALUE_CHARS (a YAML anchor can expand to megabytes)."""
    text = reprlib_repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def reprlib_repr(value: Any) -> str:
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = MAX_VALUE_CHARS, 80, 10, 10, 3
    return r.repr(value)


def _format(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        kind, msg = e["type"], e["msg"]
        if kind == "missing":
            lines.append(f"  {key}: missing (required key)")
        elif kind == "extra_forbidden":
            lines.append(f"  {key}: unknown key (typo?) with value {_cut(e.get('input'))}")
        elif kind == "value_error":  # cross-field rule: the message names the fields
            lines.append(f"  {key}: {msg.removeprefix('Value error, ')[:1000]}")
        else:
            lines.append(f"  {key} = {_cut(e.get('input'))}: {msg}{_hint(kind, e.get('input'))}")
    return "\n".join(lines)


def _hint(kind: str, value: Any) -> str:
    """What to write instead, for the strict-type refusals."""
    if isinstance(value, str) and kind in ("int_type", "float_type", "bool_type"):
        return " (write it without quotes)"
    if isinstance(value, bool) and kind in ("int_type", "float_type"):
        return " (a number, not true/false)"
    if kind == "finite_number":
        return " (.inf/.nan are not allowed)"
    return ""


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format(err, source)) from None


def load_params(
    path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None
) -> Params:
    """Load and validate params.yaml. `overrides` maps dotted keys to values (tests, CLIs)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {str(err)[:1000]}") from None
    if raw is None and overrides:  # an empty file: report its missing keys, not a crash
        raw = {}
    if overrides and not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    params = parse_params(raw, str(path))
    params._source = (str(path.resolve()), dict(overrides or {}))
    return params


def arm_params(params: Params, overrides: dict[str, Any], source: str = "params") -> Params:
    """`params` with dotted-key overrides applied, validated (a comparison's arm x seed)."""
    raw = params.model_dump(mode="json")
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return parse_params(raw, source)


def set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for i, p in enumerate(parents):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            where = ".".join(parents[: i + 1])
            raise ParamsError(
                f"override {key}={value!r}: {where} is {node!r}, not a section "
                f"with keys (set {where} itself, or check the key path)"
            )
    node[leaf] = value


# ---------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads YAML 1.2 floats (1e-3)."""


def _no_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {_cut(key)} (first on line {seen[key] + 1}): YAML would keep "
                f"only the last one; remove one of them",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str) -> Any:
    """YAML as params.yaml and `-S key=value` are read: duplicate keys refused, 1e-3 a float."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: plain values only
