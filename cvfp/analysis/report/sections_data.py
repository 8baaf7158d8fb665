"""The Data section: split sizes, the held-out subset checks and the Great Expectations suite."""

from __future__ import annotations

from cvfp.analysis.formats import fmt_bool, fmt_int, fmt_pct, fmt_text
from cvfp.analysis.report.document import Heading, Link, Para, Section, Table
from cvfp.analysis.report.inputs import TITLES, ReportInputs


def section_data(inp: ReportInputs) -> Section:
    d = inp.data
    s = Section("data", TITLES["data"])
    s.add(
        Para(
            [
                f"Source {fmt_text(d.source)} (layout {fmt_text(d.layout)}), "
                f"{fmt_int(d.raw_conversations)} raw conversations, "
                f"tokenizer {fmt_text(d.tokenizer_kind)}, max_seq_length "
                f"{fmt_text(d.max_seq_length)} ({fmt_int(d.truncated_conversations)} conversations "
                f"truncated, {fmt_pct(d.truncated_token_share)} of their tokens dropped), "
                f"split strategy {d.split_strategy} with val_fraction {d.val_fraction} "
                f"and test_fraction {d.test_fraction}."
            ]
        ),
        Table(
            ["split", "conversations", "tokens", "unique tokens"],
            [
                [sp, fmt_int(conversations), fmt_int(tokens), fmt_int(unique)]
                for sp, conversations, tokens, unique in (
                    ("train", d.train_conversations, d.train_tokens, d.train_unique_tokens),
                    ("val", d.val_conversations, d.val_tokens, d.val_unique_tokens),
                    ("test", d.test_conversations, d.test_tokens, d.test_unique_tokens),
                )
            ],
        ),
        Table(
            ["item", "value"],
            [
                ["vocabulary size", fmt_int(d.vocab_size)],
                [
                    "val tokens not in train (unexpected_val_tokens)",
                    fmt_int(d.unexpected_val_tokens),
                ],
                ["val token set is a subset of train (val_subset_ok)", fmt_bool(d.val_subset_ok)],
                [
                    "test tokens not in train (unexpected_test_tokens)",
                    fmt_int(d.unexpected_test_tokens),
                ],
                [
                    "test token set is a subset of train (test_subset_ok)",
                    fmt_bool(d.test_subset_ok),
                ],
                [
                    "held-out tokens dropped for ids unseen in train: val / test "
                    "(conversations cut there)",
                    f"{fmt_int(d.val_dropped_tokens)} / {fmt_int(d.test_dropped_tokens)} "
                    f"({fmt_int(d.val_cut_conversations)} / {fmt_int(d.test_cut_conversations)})",
                ],
                [
                    "share of held-out tokens dropped (heldout_dropped_share)",
                    f"{100 * d.heldout_dropped_share:.2f}%",
                ],
            ],
        ),
    )
    dropped = d.dropped_conversations.model_dump()
    s.add(
        Heading("Dropped conversations by reason"),
        Table(
            ["reason", "conversations"],
            [[k, fmt_int(v)] for k, v in dropped.items()]
            + [["total", fmt_int(sum(v for v in dropped.values() if v is not None))]],
        ),
    )
    _great_expectations(inp, s)
    return s


def _great_expectations(inp: ReportInputs, s: Section) -> None:
    """The suite's result, from its own validation.json (Great Expectations' format)."""
    gx, d = inp.gx, inp.data
    s.add(Heading("Great Expectations"))
    st = gx.get("statistics", {})
    ok = gx.get("success", d.gx_success)
    s.add(
        Para(
            [
                f"Suite {gx.get('suite_name', 'n/a')}: {'PASSED' if ok else 'FAILED'}, "
                f"{st.get('successful_expectations', d.gx_expectations_successful)}/"
                f"{st.get('evaluated_expectations', d.gx_expectations_evaluated)} "
                f"expectations successful."
            ]
        )
    )
    rows = []
    for r in gx.get("results", []):
        cfg, res = r.get("expectation_config", {}), r.get("result", {})
        column = cfg.get("kwargs", {}).get("column") or "(table)"
        observed = res.get("observed_value", res.get("element_count"))
        rows.append(
            [
                cfg.get("type", "?"),
                str(column),
                "pass" if r.get("success") else "FAIL",
                fmt_int(observed) if isinstance(observed, (int, float)) else str(observed),
                fmt_int(res.get("unexpected_count")) if "unexpected_count" in res else "n/a",
            ]
        )
    if rows:
        s.add(Table(["expectation", "column", "result", "observed / rows", "unexpected"], rows))
    if inp.gx_docs_href:
        s.add(Para(["Data docs: ", Link("Great Expectations data docs (local)", inp.gx_docs_href)]))
    else:
        s.add(Para(["Data docs were not found next to the validation result."], "note"))
