"""The sections of params.yaml, one pydantic model each, every hyperparameter with its allowed
range. `cvfp.params.Params` is the whole file (these sections plus the cross-section rules);
import the sections from `cvfp.params` like the rest of the params API.

Every section derives from `Section`, whose config makes every field, present or added
later, strict: an int is an int (not `'3'`, not `true`), a bool is a bool (not `'yes'`), a
float is a finite number (no `.inf` / `.nan`), a string is not empty, unknown keys fail.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# none: the control arm (SPEC 9): no Phase 1 step, C* from the initialised stack
Objective = Literal["cvfp", "reconstruction", "none"]
Heads = Literal["single", "per_block"]  # Phase 2 token heads


class Section(BaseModel):
    # forbid: a typo in params.yaml must fail, not be silently ignored; strict: no coercion
    # of '3' or true to 3, 'yes' to True; finite floats only; no empty strings (a path '' is
    # the current directory). Every section (and any key added to one) follows these rules.
    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, str_min_length=1, frozen=False
    )


# numpy's seeds are 32-bit: np.random.seed(2**32) fails far from params.yaml
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class DataParams(Section):
    source: Literal["chatterbot", "ultrachat", "local", "sharegpt"]
    path: str
    split: str
    # layout of local/hub records (cvfp.data.record_layouts.LAYOUTS); auto: detected from their fields
    format: Literal["auto", "ultrachat_200k", "ultrachat_original", "sharegpt", "openai"]
    on_truncated: Literal["error", "keep_complete"]  # a JSON file that ends mid-record
    num_samples: int | None = Field(gt=0)
    streaming: bool
    timeout_s: float = Field(gt=0)


class TokenizerParams(Section):
    kind: Literal["bpe", "pretrained"]
    name: str
    vocab_size: int = Field(ge=260, le=1_000_000)  # byte-level BPE needs 256 bytes + specials
    max_seq_length: int | None = Field(ge=2)
    num_proc: int = Field(ge=1, le=64)


class SplitParams(Section):
    """cvfp/data/splitting.py: test = the last test_fraction of the conversations; val = the
    val_fraction before them (holdout) or the train token stream's tail (tail)."""

    strategy: Literal["holdout", "tail"]
    val_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> SplitParams:
        if self.strategy == "holdout" and self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction} + {self.test_fraction} "
                f"leaves nothing for train; their sum must be below 1"
            )
        return self


class ModelParams(Section):
    context_dim: int = Field(gt=0)
    embed_dim: int = Field(gt=0)
    hidden_dim: int = Field(gt=0)
    layer_structure: list[int] = Field(min_length=1)
    layernorm_mix: float = Field(ge=0, le=1)
    init_std: float = Field(gt=0)
    bias_init_std: float = Field(ge=0)
    embedding: Literal["pretrained", "random_frozen", "learned"]
    embed_init_std: float = Field(gt=0)
    pretrained_name: str

    @model_validator(mode="after")
    def _check(self) -> ModelParams:
        if self.hidden_dim != self.context_dim + self.embed_dim:
            raise ValueError(
                f"hidden_dim={self.hidden_dim} must equal context_dim + embed_dim "
                f"= {self.context_dim} + {self.embed_dim} = {self.context_dim + self.embed_dim}"
            )
        if any(n < 1 for n in self.layer_structure):
            raise ValueError(
                f"layer_structure={self.layer_structure}: every block needs >= 1 layer"
            )
        return self

    @property
    def num_blocks(self) -> int:
        return len(self.layer_structure)


class DiversityParams(Section):
    kind: Literal["global_mean", "ema_variance", "distribution"]
    momentum: float = Field(ge=0, lt=1)


class ReconstructionParams(Section):
    """phase1.objective = reconstruction (SPEC section 7, seed 003); see cvfp/phase1/reconstruction.py."""

    recon_weight: float = Field(ge=0)  # lambda in loss = CE + lambda * MSE
    chunk_length: int = Field(ge=1)  # TBPTT: positions per backpropagation chunk
    epochs: int = Field(ge=1)
    batch_conversations: int = Field(ge=1)  # conversations trained side by side
    lr: float = Field(gt=0)


class DivergenceParams(Section):
    """phase1.divergence: when Phase 1 counts as diverged (cvfp/phase1/guard.py)."""

    action: Literal["fail", "continue"]  # continue: warn and keep the model anyway
    max_loss: float = Field(gt=0)  # |cvfp/diversity/total loss| of an iteration
    max_weight: float = Field(gt=0)  # largest |trainable weight| after a step
    min_effective_rank_ratio: float = Field(ge=0, le=1)  # contexts collapsed below this


class Phase1Params(Section):
    objective: Objective
    mode: Literal["parallel", "sequential"]
    context_reset: Literal["stream", "conversation"]
    max_iterations: int = Field(ge=1)
    # objective cvfp: at least this many iterations even when the convergence rule says stop
    min_iterations: int = Field(default=0, ge=0)
    lr: float = Field(gt=0)
    dist_reg_weight: float = Field(ge=0, le=1)
    convergence_threshold: float = Field(gt=0)
    min_converged_ratio: float = Field(gt=0, le=1)
    grad_clip: float = Field(gt=0)
    chunk_tokens: int = Field(gt=0)  # parallel mode: tokens per forward/backward chunk
    diversity: DiversityParams
    warn_tokens: int = Field(gt=0)
    progress: bool
    reconstruction: ReconstructionParams
    divergence: DivergenceParams

    @model_validator(mode="after")
    def _check(self) -> Phase1Params:
        if self.min_iterations > self.max_iterations:
            raise ValueError(
                f"min_iterations={self.min_iterations} exceeds max_iterations="
                f"{self.max_iterations}; lower min_iterations or raise max_iterations"
            )
        return self


class ChecksParams(Section):
    convergence_trials: int = Field(ge=2)
    convergence_final_diff: float = Field(gt=0)
    slope_tol: float = Field(gt=0)
    std_tol: float = Field(gt=0)
    probe_samples: int = Field(ge=2)
    identity_warn: float = Field(gt=0, le=1)
    ignores_tokens_warn: float = Field(gt=0, le=1)


class MaterializeParams(Section):
    chunk_tokens: int = Field(gt=0)  # rows held per step of the pass: memory only, same bytes
    batch_tokens: int = Field(gt=0)  # conversations of similar length run side by side


class Phase2Params(Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    grad_clip: float = Field(gt=0)
    patience: int = Field(ge=1)
    freeze_context: bool
    heads: Heads
    block_weights: list[Annotated[float, Field(ge=0)]] = Field(min_length=1)
    # cstar: the fixed contexts; zero: the no-context control, trained and evaluated with C*
    # replaced by zeros from a zero-initialised head (SPEC 9)
    context: Literal["cstar", "zero"]


class BaselineParams(Section):
    # add-k smoothing: the k with the lowest val loss is chosen (val selects, test reports)
    bigram_k_grid: list[float] = Field(min_length=1)
    transformer: bool = True  # false skips the GPT-2 baseline (metrics then lack its key)
    transformer_n_layer: int = Field(ge=1)
    transformer_n_head: int = Field(ge=1)
    transformer_n_positions: int = Field(ge=2)
    param_tolerance: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> BaselineParams:
        if any(k <= 0 for k in self.bigram_k_grid):
            raise ValueError(f"bigram_k_grid={self.bigram_k_grid}: every k must be > 0")
        return self


class GenerateParams(Section):
    max_new_tokens: int = Field(ge=1)
    temperature: float = Field(gt=0)
    top_k: int = Field(ge=0)


_DASK_ADDRESS = re.compile(r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")


class OrchestrationParams(Section):
    """How the stages run, never what they compute: the Prefect flow's shards (tokenize,
    materialize) and how phase2 reads C*. Never changes an output, so none of it is a DVC
    param (a change reruns nothing)."""

    task_runner: Literal["thread", "dask"]
    dask_address: str | None
    workers: int = Field(ge=1, le=256)
    shard_conversations: int = Field(gt=0)
    # phase2: a split's C* up to this many MiB is read into memory once, a larger one row by
    # row from disk when used; 0: always from disk. Memory only: never changes an output byte,
    # so it is left out of the params a checkpoint records (Params.record: the same bytes)
    cstar_in_memory_mb: int = Field(ge=0)

    @model_validator(mode="after")
    def _check(self) -> OrchestrationParams:
        if self.dask_address is not None:
            m = _DASK_ADDRESS.fullmatch(self.dask_address)
            if not m or not 0 < int(m.group(3)) < 65536:
                raise ValueError(
                    f"dask_address={self.dask_address!r}: expected null (a temporary LocalCluster) "
                    f"or a scheduler address like 'tcp://host:8786' (tcp:// or tls://, port 1-65535)"
                )
        return self


class RuntimeParams(Section):
    """How a training stage runs in its process. `threads` (torch intra-op threads; null:
    torch's default, OMP_NUM_THREADS or the cores) changes the last bits of the results, so
    it is a DVC param of phase1 and phase2: flows.compare sets it for every experiment
    (cores / compare.workers), so an experiment's numbers do not depend on how many ran
    beside it, and DVC never mixes results of two thread counts."""

    threads: int | None = Field(default=None, ge=1, le=1024)


_ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Keys an arm may not set: the sweep sets the seed and the thread count (runtime), and a
# comparison cannot nest one.
_ARM_RESERVED = ("seed", "compare", "runtime")


class CompareParams(Section):
    """`python -m flows.compare` (docs/compare.md). Not a param of any pipeline stage: editing
    it reruns nothing (the report stage, which depends on the whole params.yaml, aside)."""

    arms: dict[str, dict[str, Any]] = Field(min_length=1)  # arm -> {dotted.key: value} overrides
    run: list[str] = Field(min_length=1)  # arms a default comparison runs, in report order
    control: str  # every other arm is paired with this one
    # The Holm family: Phase 1 arms judged against the control, each with a verdict word; any
    # other arm that runs is paired with the control but gets an interval only.
    confirmatory: list[str]
    seeds: list[Seed] = Field(min_length=1)  # seed values; `--seeds N` takes the first N
    # The Transformer baseline depends on the arm only through its epoch budget (the arm's
    # Phase 2 epochs run): train it in the control arm only and pair every arm with that.
    transformer_in_control_only: bool = True
    # Statistics (cvfp/analysis/compare_stats.py). delta: smallest effect of interest as a relative change
    # of test perplexity; the bound on test loss is +-ln(1 + delta) nats/token.
    delta: float = Field(gt=0, lt=1)
    alpha: float = Field(gt=0, lt=0.5)  # test level; intervals are (1 - alpha)
    power: float = Field(gt=0, lt=1)  # seeds_needed: power to detect delta
    bootstrap_resamples: int = Field(ge=100, le=1_000_000)
    bootstrap_seed: int = Field(ge=0)
    # Experiments run side by side (`--workers`); each with `threads` torch threads
    # (null: cores // workers), recorded as its runtime.threads param (docs/compare.md).
    workers: int = Field(default=1, ge=1, le=256)
    threads: int | None = Field(default=None, ge=1, le=1024)

    @model_validator(mode="after")
    def _check(self) -> CompareParams:
        for name, overrides in self.arms.items():
            if not _ARM_NAME.fullmatch(name):
                raise ValueError(
                    f"arms: {name!r} is not a valid arm name (letters, digits, _ . -; "
                    f"it becomes part of a DVC experiment name)"
                )
            for key in overrides:
                if key.split(".")[0] in _ARM_RESERVED:
                    raise ValueError(
                        f"arms.{name}: {key!r} cannot be set by an arm "
                        f"(the comparison sets the seed and runtime.threads; arms cannot "
                        f"nest compare)"
                    )
        for key, names in (
            ("run", self.run),
            ("control", [self.control]),
            ("confirmatory", self.confirmatory),
        ):
            unknown = [a for a in names if a not in self.arms]
            if unknown:
                raise ValueError(
                    f"{key}: unknown arm(s) {unknown}; defined arms: {list(self.arms)}"
                )
        if len(set(self.run)) != len(self.run):
            raise ValueError(f"run lists an arm twice: {self.run}")
        if self.control in self.confirmatory:
            raise ValueError(
                f"confirmatory lists the control {self.control!r}: list the arms compared "
                f"with it (the control is not compared with itself)"
            )
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds}: need distinct seeds >= 0")
        return self
