"""Great Expectations suite on the held-out (val and test) tokens, run before anything trains.

The val and test token streams are exploded to one row per token (split, conversation_id,
position, token_id) and must satisfy:
  * at least one row;
  * both held-out splits present (`split` holds val and test);
  * token_id never null;
  * token_id within [0, vocab_size);
  * token_id in the set of train token ids (held-out data come from train, SPEC 8 and 9).
The result is written to <out>/validation.json and rendered as GX data docs under
<out>/data_docs/index.html. A failure raises `ExpectationFailed` with the number of
offending tokens per split and the first ids with their decoded text.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

# GX logs hundreds of INFO lines at import; keep its warnings only.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

SUITE = "heldout_tokens_from_train"
SITE = "split"
# GX stamps every run with the time and fresh UUIDs; data/split is a DVC output that must be
# the same bytes on a rerun, so the run gets this fixed time and normalize_run_metadata
# replaces the rest (the stage's real time is in metrics/timing/split.json).
RUN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
_STAMP = re.compile(r"\d{8}T\d{6}\.\d{6}Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class ExpectationFailed(RuntimeError):
    """The held-out data broke the suite; the split stage writes nothing."""


def build_suite(gx, train_vocab: np.ndarray, vocab_size: int, splits: list[str]):
    E = gx.expectations
    suite = gx.ExpectationSuite(name=SUITE)
    suite.add_expectation(E.ExpectTableRowCountToBeBetween(min_value=1))
    suite.add_expectation(
        E.ExpectColumnDistinctValuesToContainSet(column="split", value_set=splits)
    )
    suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column="token_id"))
    suite.add_expectation(
        E.ExpectColumnValuesToBeBetween(column="token_id", min_value=0, max_value=vocab_size - 1)
    )
    suite.add_expectation(
        E.ExpectColumnValuesToBeInSet(column="token_id", value_set=[int(x) for x in train_vocab])
    )
    return suite


Parts = dict[str, tuple[list[int], list[np.ndarray]]]  # split -> (conversation ids, tokens)


def token_frame(parts: Parts, first_row: int = 0):
    """One row per held-out token (split, conversation_id, position, token_id), indexed
    from `first_row` (a batch's rows keep their index in the whole held-out stream)."""
    import pandas as pd

    frames = []
    for name, (ids, convs) in parts.items():
        lengths = [len(c) for c in convs]
        empty = np.array([], np.int64)
        frames.append(
            pd.DataFrame(
                {
                    "split": name,
                    "conversation_id": np.repeat(np.asarray(ids, dtype=np.int64), lengths),
                    "position": np.concatenate([np.arange(n) for n in lengths]) if convs else empty,
                    "token_id": np.concatenate(convs).astype(np.int64) if convs else empty,
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    frame.index = pd.RangeIndex(first_row, first_row + len(frame))
    return frame


# Rows (held-out tokens) per GX batch: the token frame and GX's work on it take ~130 bytes
# per row, so the split stage's memory does not grow with the held-out tokens beyond this.
# Memory only: the merged result is the same bytes as validating every row at once.
BATCH_ROWS = 1 << 18
PARTIAL_UNEXPECTED = 20  # GX's partial_unexpected_count for result_format SUMMARY


def frame_batches(parts: Parts, batch_rows: int = BATCH_ROWS) -> list[Parts]:
    """`parts` cut at conversation boundaries into runs of at least `batch_rows` tokens (the
    last: the rest), in order (val's conversations, then test's); every split named in
    `parts` keeps a key in each batch, so the frames have the same columns and dtypes."""
    out: list[Parts] = []
    cur: Parts = {name: ([], []) for name in parts}
    rows = 0
    for name, (ids, convs) in parts.items():
        for cid, conv in zip(ids, convs, strict=True):
            cur[name][0].append(cid)
            cur[name][1].append(conv)
            rows += len(conv)
            if rows >= batch_rows:
                out.append(cur)
                cur, rows = {n: ([], []) for n in parts}, 0
    if rows or not out:
        out.append(cur)
    return out


def validate_heldout(
    parts: Parts,
    train_vocab: np.ndarray,
    vocab_size: int,
    out_dir: str | Path,
    decode: Callable[[int], str] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> dict:
    """Run the suite on the held-out `parts` ({"val": (ids, token arrays), "test": ...}),
    write validation.json + data docs into out_dir, raise on failure. More than
    `batch_rows` tokens are validated a batch of conversations at a time and the results
    merged (`merge_results`): the same validation.json and data docs as one run."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # this module forces its own logger to INFO at import; quiet it after importing
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ctx.add_data_docs_site(
        SITE,
        {
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(out_dir / "data_docs"),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    batch_def = (
        ctx.data_sources.add_pandas("split")
        .add_dataframe_asset("heldout_tokens")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = ctx.suites.add(build_suite(gx, train_vocab, vocab_size, list(parts)))
    vdef = ctx.validation_definitions.add(
        gx.ValidationDefinition(name="heldout", data=batch_def, suite=suite)
    )
    batches = frame_batches(parts, batch_rows)
    docs = gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[SITE])
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(
            name="split",
            validation_definitions=[vdef],
            result_format={"result_format": "SUMMARY"},
            # in batches: rendered once, from the merged result (_run_batches)
            actions=[docs] if len(batches) == 1 else [],
        )
    )
    run_id = RunIdentifier(run_name="split", run_time=RUN_TIME)
    if len(batches) == 1:  # every row at once
        frame = token_frame(parts)
        result = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
        vr = next(iter(result.run_results.values()))
        unseen = frame.loc[~frame["token_id"].isin(train_vocab), "split"].value_counts()
        unseen_per_split = {n: int(unseen.get(n, 0)) for n in parts}
        del frame
    else:
        result, unseen_per_split = _run_batches(ctx, checkpoint, docs, batches, train_vocab, run_id)
        vr = next(iter(result.run_results.values()))
    (out_dir / "validation.json").write_text(json.dumps(vr.to_json_dict(), indent=2) + "\n")
    normalize_run_metadata(out_dir)
    summary = summarize(vr)
    if not summary["success"]:
        per_split = ", ".join(f"{n} {unseen_per_split[n]}" for n in parts)
        raise ExpectationFailed(
            failure_message(vr, decode) + f"\n  tokens not in train per split: {per_split}"
        )
    return summary


def _run_batches(ctx, checkpoint, docs, batches: list[Parts], train_vocab: np.ndarray, run_id):
    """The checkpoint (without actions, so nothing is rendered from a partial result) on
    each batch's frame, the results merged into the last batch's (which the store then
    holds), and the data-docs action `docs` run once on that. Returns (the last checkpoint
    result, held-out tokens not in train per split)."""
    import hashlib

    import pandas as pd

    vrs, present, fingerprint = [], set(), hashlib.md5(usedforsecurity=False)
    unseen_per_split = dict.fromkeys(batches[0], 0)
    first_row = 0
    for batch in batches:
        frame = token_frame(batch, first_row)
        first_row += len(frame)
        result = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
        vrs.append(next(iter(result.run_results.values())))
        # GX's batch fingerprint of the whole frame: md5 over every row's hash, in order
        fingerprint.update(pd.util.hash_pandas_object(frame, index=True).values)
        present |= set(frame["split"].unique())
        unseen = frame.loc[~frame["token_id"].isin(train_vocab), "split"].value_counts()
        for name in unseen_per_split:
            unseen_per_split[name] += int(unseen.get(name, 0))
        del frame
    key, vr = next(iter(result.run_results.items()))
    merge_results(vr, vrs, present)
    vr.meta["batch_markers"]["pandas_data_fingerprint"] = fingerprint.hexdigest()
    ctx.validation_results_store.set(key, vr)
    docs.run(checkpoint_result=result)
    return result, unseen_per_split


def merge_results(into, vrs: list, present: set[str]) -> None:
    """`vrs` (one suite's results on consecutive batches of the rows) as one result on all
    the rows, written into `into` (one of them): row and element counts and unexpected
    counts add up, percentages are recomputed as GX computes them, the distinct values of
    `split` are those of any batch, partial unexpected lists are the first ones in row
    order (their value counts added up from the batches' partial counts). Successes and
    statistics follow from the merged numbers."""
    from collections import Counter

    for k, r in enumerate(into.results):
        rs = [v.results[k] for v in vrs]
        kind, res, kw = r.expectation_config.type, r.result, r.expectation_config.kwargs
        if kind == "expect_table_row_count_to_be_between":
            res["observed_value"] = sum(x.result["observed_value"] for x in rs)
            r.success = res["observed_value"] >= (kw.get("min_value") or 0)
        elif kind == "expect_column_distinct_values_to_contain_set":
            missing = [v for v in kw["value_set"] if v not in present]
            res["missing_count"], res["partial_missing_list"] = len(missing), missing
            r.success = not missing
        elif "element_count" in res:
            n = sum(x.result["element_count"] for x in rs)
            bad = sum(x.result["unexpected_count"] for x in rs)
            res["element_count"], res["unexpected_count"] = n, bad
            nonnull = n
            if "missing_count" in res:
                res["missing_count"] = sum(x.result["missing_count"] for x in rs)
                nonnull = n - res["missing_count"]
                res["missing_percent"] = res["missing_count"] / n * 100 if n else None
                res["unexpected_percent_total"] = bad / n * 100 if n else None
                res["unexpected_percent_nonmissing"] = bad / nonnull * 100 if nonnull else None
            res["unexpected_percent"] = bad / nonnull * 100 if nonnull else None
            limit = PARTIAL_UNEXPECTED
            for key in ("partial_unexpected_list", "partial_unexpected_index_list"):
                if key in res:
                    res[key] = [v for x in rs for v in x.result.get(key, [])][:limit]
            if "partial_unexpected_counts" in res:
                counts: Counter = Counter()
                for x in rs:
                    for c in x.result.get("partial_unexpected_counts", []):
                        counts[c["value"]] += c["count"]
                top = sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))[:limit]
                res["partial_unexpected_counts"] = [{"value": v, "count": c} for v, c in top]
            r.success = bad == 0
        else:
            raise ValueError(f"merge_results: no rule to merge {kind} over batches")
    ok = sum(bool(r.success) for r in into.results)
    total = len(into.results)
    into.statistics.update(
        {
            "evaluated_expectations": total,
            "successful_expectations": ok,
            "unsuccessful_expectations": total - ok,
            "success_percent": ok / total * 100 if total else None,
        }
    )
    into.success = ok == total


def normalize_run_metadata(out_dir: Path) -> None:
    """Make GX's output the same bytes on every run: its wall-clock stamps (load time, the
    `?d=` cache busters of the data docs) become RUN_TIME and its random UUIDs (ids of
    the ephemeral context, expectations, validation, checkpoint) become numbered ones, in
    order of first appearance over the files in sorted order."""
    fixed = RUN_TIME.strftime("%Y%m%dT%H%M%S.%fZ")
    uuids: dict[str, str] = {}

    def number(m: re.Match) -> str:
        return uuids.setdefault(m.group(0), f"00000000-0000-4000-8000-{len(uuids) + 1:012d}")

    for path in sorted(p for p in out_dir.rglob("*") if p.suffix in (".html", ".json")):
        text = path.read_text(encoding="utf-8")
        new = _UUID.sub(number, _STAMP.sub(fixed, text))
        if new != text:
            path.write_text(new, encoding="utf-8")


def summarize(vr) -> dict:
    in_set = _result(vr, "expect_column_values_to_be_in_set")
    return {
        "success": bool(vr.success),
        "expectations_evaluated": int(vr.statistics["evaluated_expectations"]),
        "expectations_successful": int(vr.statistics["successful_expectations"]),
        "unexpected_heldout_tokens": int(in_set.result.get("unexpected_count") or 0)
        if in_set
        else None,
    }


def _result(vr, kind: str):
    return next((r for r in vr.results if r.expectation_config.type == kind), None)


def failure_message(vr, decode: Callable[[int], str] | None) -> str:
    lines = [
        f"held-out data failed {vr.statistics['unsuccessful_expectations']} of "
        f"{vr.statistics['evaluated_expectations']} expectations (suite {SUITE}):"
    ]
    for r in vr.results:
        if r.success:
            continue
        kind, res = r.expectation_config.type, r.result
        if "unexpected_count" in res:
            ids = list(dict.fromkeys(int(x) for x in res.get("partial_unexpected_list") or []))[:5]
            shown = ", ".join(f"{i} ({decode(i)!r})" if decode else str(i) for i in ids)
            lines.append(
                f"  {kind}: {res['unexpected_count']} offending held-out tokens; first ids: {shown}"
            )
        else:
            lines.append(f"  {kind}: observed {res.get('observed_value')!r}")
        if r.exception_info and r.exception_info.get("raised_exception"):
            lines.append(f"    error: {r.exception_info.get('exception_message')}")
    return "\n".join(lines)
