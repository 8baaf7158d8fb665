"""Inputs of the report stage as a tiny, consistent run writes them (`fake_run`), and
building the report from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cvfp.params import load_params
from cvfp.phase1.metrics import Trials
from helpers import ROOT

D = 16  # context dim of the fake run


def _history(total: int, rates: list[float], train: bool) -> list[dict]:
    rows = []
    for it, rate in enumerate(rates):
        conv = int(rate * total)
        rows.append(
            {
                "iteration": it,
                "converged": conv,
                "total": total,
                "convergence_rate": conv / total,
                "cvfp_loss": None if it == 0 else 0.5 / it,
                "diversity_loss": None if it == 0 else -0.1 * it,
                "total_loss": None if it == 0 else 0.05 / it - 0.09 * it,
                "steps": int(train and it > 0),
                "skipped_steps": 0,
                "seconds": 0.25,
            }
        )
    return rows


def _split_metrics(hist: list[dict], er: float, trials: dict | None = None) -> tuple[dict, dict]:
    f = hist[-1]
    sv = [1.0 / (i + 1) for i in range(D)]
    er_check = {
        "effective_rank": er,
        "dim": D,
        "ratio": er / D,
        "percent": 100 * er / D,
        "actual_rank": D,
        "singular_values": sv,
    }
    deg = {
        "mean_pairwise_l2": 5.2,
        "mean_pairwise_cosine": 0.03,
        "global_attractor": False,
        "mean_norm": 4.0,
        "zero_solution": False,
        "norm_std": 0.01,
        "norm_min": 3.9,
        "norm_max": 4.1,
        "sparsity": 0.004,
    }
    ident = {
        "mean_deviation_from_mean": 3.9,
        "not_near_zero": True,
        "input_output_cosine": 0.54,
        "identity_warning": False,
        "different_token_output_similarity": 0.49,
        "ignores_tokens_warning": False,
        "context_token_cosine": 0.006,
        "context_equals_token_warning": False,
    }
    m = {
        "converged": f["converged"],
        "total": f["total"],
        "convergence_rate": f["convergence_rate"],
        "iterations": len(hist) - 1,
        "stopped_early": False,
        "steps": sum(r["steps"] for r in hist),
        "converged_by_construction": False,
        "segment_starts": 8,
        "cvfp_loss": f["cvfp_loss"],
        "diversity_loss": f["diversity_loss"],
        "total_loss": f["total_loss"],
        "skipped_steps": 0,
        "effective_rank": er,
        "effective_rank_ratio": er / D,
        "actual_rank": D,
        "degeneracy": deg,
        "identity": ident,
    }
    checks = {"effective_rank": er_check, "degeneracy": deg, "identity": ident, "history": hist}
    if trials is not None:
        m["trials"] = {k: trials[k] for k in Trials.model_fields}  # the keys phase1.json keeps
        checks["convergence"] = trials
    return m, checks


def fake_run() -> dict[str, object]:
    """Consistent inputs of a tiny run: relative path -> JSON object (or CSV/HTML text)."""
    train_h = _history(640, [0.0, 0.6, 0.97], train=True)
    val_h = _history(128, [0.0, 0.5, 1.0], train=False)
    losses = [0.3 * 0.5**k for k in range(10)]
    trials = {
        "initial_loss": losses[0],
        "final_loss": losses[-1],
        "reduction_percent": 99.8,
        "std": 0.09,
        "slope": -0.02,
        "verdict": "CONVERGING",
        "losses": losses,
        "trials": 10,
        "final_diff": losses[-1],
        "passed": True,
    }
    tm, tc = _split_metrics(train_h, 13.55)
    vm, vc = _split_metrics(val_h, 12.34, trials)
    phase1 = {
        "objective": "cvfp",
        "max_iterations": 10,
        "min_iterations": 0,
        "train_seconds": 1.5,
        "train": tm,
        "val": vm,
    }
    data = {
        "source": "chatterbot",
        "raw_conversations": 60,
        "tokenizer_kind": "bpe",
        "vocab_size": 300,
        "max_seq_length": 32,
        "truncated_conversations": 3,
        "split_strategy": "holdout",
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "train_conversations": 40,
        "train_tokens": 640,
        "train_unique_tokens": 200,
        "val_conversations": 8,
        "val_tokens": 128,
        "val_unique_tokens": 90,
        "unexpected_val_tokens": 0,
        "val_subset_ok": True,
        "test_conversations": 9,
        "test_tokens": 131,
        "test_unique_tokens": 93,
        "unexpected_test_tokens": 0,
        "test_subset_ok": True,
        "heldout_dropped_share": 0.0123,
        "dropped_conversations": {"empty": 1, "val_unseen_token": 0, "test_unseen_token": 0},
        "val_dropped_tokens": 1,
        "test_dropped_tokens": 2,
        "val_cut_conversations": 1,
        "test_cut_conversations": 2,
        "gx_success": True,
        "gx_expectations_evaluated": 2,
        "gx_expectations_successful": 2,
    }
    gx = {
        "success": True,
        "suite_name": "val_tokens_from_train",
        "statistics": {
            "evaluated_expectations": 2,
            "successful_expectations": 2,
            "unsuccessful_expectations": 0,
            "success_percent": 100.0,
        },
        "results": [
            {
                "success": True,
                "expectation_config": {
                    "type": "expect_table_row_count_to_be_between",
                    "kwargs": {"min_value": 1},
                },
                "result": {"observed_value": 128},
            },
            {
                "success": True,
                "expectation_config": {
                    "type": "expect_column_values_to_be_in_set",
                    "kwargs": {"column": "token_id"},
                },
                "result": {"element_count": 128, "unexpected_count": 0},
            },
        ],
    }
    epochs = [
        {
            "epoch": e,
            "train_loss": 5.0 - 0.5 * e,
            "val_loss": 5.1 - 0.4 * e,
            "train_ppl": 0.0,
            "val_ppl": 0.0,
            "train_acc": 0.05 * e,
            "val_acc": 0.04 * e,
            "seconds": 0.3,
        }
        for e in (1, 2, 3)
    ]
    import math

    for r in epochs:
        r["train_ppl"], r["val_ppl"] = math.exp(r["train_loss"]), math.exp(r["val_loss"])
    best = epochs[-1]
    phase2 = {
        "cvfp": {
            "best_epoch": 3,
            "epochs_run": 3,
            "stopped_early": False,
            "heads": "single",
            "freeze_context": False,
            "phase1_objective": "cvfp",
            "head_init": "zero",
            "context": "cstar",
            **{k: best[k] for k in best if k not in ("epoch", "seconds")},
            "test_loss": 4.05,
            "test_ppl": math.exp(4.05),
            "test_acc": 0.115,
            "trainable_params": 12345,
            "train_seconds": 0.9,
            "train_positions": 600,
            "val_positions": 120,
            "test_positions": 122,
            "stages": {
                "single": {
                    "first_epoch": 1,
                    "last_epoch": 3,
                    "best_epoch": 3,
                    "stopped_early": False,
                }
            },
        },
        "baselines": {
            "bigram": {
                "val_loss": 4.5,
                "val_ppl": math.exp(4.5),
                "val_acc": 0.11,
                "test_loss": 4.6,
                "test_ppl": math.exp(4.6),
                "test_acc": 0.105,
                "trainable_params": 90000,
                "train_seconds": 0.01,
                "k": 0.03,
                "k_grid": [0.01, 0.03, 0.1],
                "val_loss_by_k": [4.6, 4.5, 4.55],
                "distinct_pairs": 640,
            },
            "transformer": {
                "val_loss": 3.2,
                "val_ppl": math.exp(3.2),
                "val_acc": 0.21,
                "test_loss": 3.3,
                "test_ppl": math.exp(3.3),
                "test_acc": 0.205,
                "best_epoch": 3,
                "train_loss": 3.0,
                "train_ppl": math.exp(3.0),
                "trainable_params": 12000,
                "target_params": 12345,
                "param_ratio": 0.972,
                "train_seconds": 2.5,
                "epochs": 3,
                "n_embd": 16,
                "n_layer": 2,
                "n_head": 2,
                "n_positions": 256,
                "train_targets": 600,
            },
        },
        "ablations": {
            "zero_context": {
                "val_loss": 4.9,
                "val_ppl": math.exp(4.9),
                "val_acc": 0.03,
                "test_loss": 4.95,
                "test_ppl": math.exp(4.95),
                "test_acc": 0.025,
            },
            "shuffled_context": {
                "val_loss": 4.7,
                "val_ppl": math.exp(4.7),
                "val_acc": 0.05,
                "test_loss": 4.75,
                "test_ppl": math.exp(4.75),
                "test_acc": 0.045,
            },
        },
    }
    csv = "epoch,train_loss,val_loss,train_ppl,val_ppl,train_acc,val_acc,seconds\n" + "".join(
        ",".join(
            str(r[k])
            for k in (
                "epoch",
                "train_loss",
                "val_loss",
                "train_ppl",
                "val_ppl",
                "train_acc",
                "val_acc",
                "seconds",
            )
        )
        + "\n"
        for r in epochs
    )
    return {
        "metrics/data.json": data,
        "data/split/gx/validation.json": gx,
        "data/split/gx/data_docs/index.html": "<html><body>docs</body></html>",
        "metrics/phase1.json": phase1,
        "cache/phase1/checks.json": {"train": tc, "val": vc},
        "metrics/phase2.json": phase2,
        "plots/phase2_epochs.csv": csv,
        "metrics/timing/phase1.json": {
            "stage": "phase1",
            "seconds": 1.75,
            "finished_utc": "2026-01-01T00:00:00+00:00",
        },
    }


def write_run(root: Path, files: dict[str, object]) -> None:
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    for rel, obj in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=2))


def build(root: Path):
    import tasks.report as report

    params = load_params(root / "params.yaml")
    out = report.run(params)
    return out, Path(out["html"]).read_text(), Path(out["md"]).read_text()


def section(html_text: str, key: str) -> str:
    start = html_text.index(f'<section id="{key}">')
    return html_text[start : html_text.index("</section>", start)]
