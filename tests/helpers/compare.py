"""A comparison on fixed numbers (tests of cvfp/analysis/compare*.py and tasks/compare.py): per-seed
experiment records whose per-conversation tables add up to their test losses, for arms that
reach each verdict word."""

import math

import numpy as np

from cvfp.analysis.compare import summarise
from cvfp.analysis.compare_inputs import experiment_values, parse_conversations
from cvfp.analysis.compare_stats import delta_nats

DELTA = delta_nats(0.01)


def conversation_table(rows):
    """metrics/phase2_test_conversations.csv's text for `rows`."""
    return "conversation_id,targets,cvfp_nats,bigram_nats,transformer_nats\n" + "".join(
        ",".join(str(v) for v in r) + "\n" for r in rows
    )


SEEDS = [42, 7, 123, 1]
TARGETS = np.array([10.0, 4.0, 7.0])
# arm -> its per-seed difference in test loss vs the control (nats/token)
DIFFS = {
    "better": [-0.05, -0.051, -0.049, -0.0505],
    "worse": [0.08, 0.081, 0.079, 0.0805],
    "equiv": [0.001, -0.0008, 0.0005, -0.0002],
    "incon": [0.05, -0.04, 0.03, -0.02],
    "few": [0.02, None, None, None],  # one seed finished
    "no_context": [0.4, 0.38, 0.41, 0.42],  # interval only
}


def experiment(arm, k, seed, diff):
    """An ok experiment record whose per-conversation table adds up to its test loss."""
    base = np.array([30.0, 13.0, 20.0]) + 0.1 * k  # the control's nats, per seed
    nats = base + diff * TARGETS + np.array([0.01, -0.01, 0.0])  # same total: loss diff = diff
    rows = [
        (f"c{i}", int(t), n, 1.5 * n, (0.9 * n if arm == "none" else ""))
        for i, (t, n) in enumerate(zip(TARGETS, nats, strict=True))
    ]
    conv = parse_conversations(conversation_table(rows), f"cmp-{arm}-s{seed}")
    loss = conv.loss("cvfp")
    p2 = {
        "cvfp": {
            "test_loss": loss,
            "test_ppl": math.exp(loss),
            "test_acc": 0.5,
            "val_loss": 2.0,
            "best_epoch": 2,
        },
        "baselines": {
            "bigram": {"test_loss": conv.loss("bigram"), "test_ppl": 80.0, "test_acc": 0.4},
            **(
                {
                    "transformer": {
                        "test_loss": conv.loss("transformer"),
                        "test_ppl": 14.0,
                        "test_acc": 0.6,
                    }
                }
                if arm == "none"
                else {}
            ),
        },
        "ablations": {
            "zero_context": {"test_loss": loss + 1.5, "test_ppl": 100.0},
            "shuffled_context": {"test_loss": loss + 2.0 + 0.01 * k, "test_ppl": 160.0},
        },
    }
    p1 = {
        "train": {"steps": 0 if arm == "none" else 1, "converged_by_construction": True},
        "val": {"effective_rank_ratio": 0.8, "trials": {"final_diff": 0.1, "verdict": "OK"}},
    }
    return {
        "arm": arm,
        "seed": seed,
        "name": f"cmp-{arm}-s{seed}",
        "status": "ok",
        "seconds": 9.0,
        "values": experiment_values(p1, p2, conv),
        "conversations": conv,
    }


def comparison():
    """(the summarised CompareMetrics, the experiment records): one control, five arms."""
    from cvfp.params import CompareParams

    exps = []
    for k, seed in enumerate(SEEDS):
        exps.append(experiment("none", k, seed, 0.0))
        for arm, diffs in DIFFS.items():
            if diffs[k] is not None:
                exps.append(experiment(arm, k, seed, diffs[k]))
    exps.append(
        {
            "arm": "few",
            "seed": 7,
            "name": "cmp-few-s7",
            "status": "failed",
            "error": "boom",
            "seconds": 3.0,
        }
    )
    arms = ["none", *DIFFS]
    cfg = CompareParams(
        arms={a: {"phase1.objective": "none" if a == "none" else "cvfp"} for a in arms},
        run=arms,
        control="none",
        confirmatory=["better", "worse", "equiv", "incon", "few"],
        seeds=SEEDS,
        delta=0.01,
        alpha=0.05,
        power=0.8,
        bootstrap_resamples=199,
        bootstrap_seed=0,
    )
    return summarise(exps, cfg, arms, "none"), exps
