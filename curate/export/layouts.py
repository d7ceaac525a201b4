"""Training layouts of exported rows, as polars expressions over pool columns (vectorised, no Python loop).

- messages:   {"messages": [{role, content}, ...], "weight", "id", "domain"}   (TRL conversational)
- alpaca:     {"instruction", "input", "output", "weight", "id", "domain"}      instruction = the pool's
              `prompt` (everything before the final assistant turn, as plain text), input = "" , output =
              the final assistant turn
- sharegpt:   {"conversations": [{from, value}, ...], "weight", "id", "domain"}  roles user->human,
              assistant->gpt, system->system (others kept as they are)
- preference: {"prompt", "chosen", "rejected", "weight", "id", "domain"}       (TRL standard preference);
              only preference rows. When any row's prompt is more than one user turn (a system turn, earlier
              turns), the whole export is TRL's conversational form instead (prompt: the messages before the
              answer; chosen / rejected: one assistant message each), so no turn is flattened into text
- prompt:     {"prompt", "weight", "id", "domain"}                              the prompt text alone, e.g. to
              generate responses for prompt-only rows (kind "prompt"; any row's prompt works)
Prompt-only rows have no response: `messages` and `sharegpt` end with the user turn, alpaca's `output` is "".
"""

from __future__ import annotations

import polars as pl

LAYOUTS = ("messages", "alpaca", "sharegpt", "preference", "prompt")
SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}
POOL_COLUMNS = ["id", "kind", "domain", "messages", "prompt", "response", "rejected"]


def check_layout(layout: str) -> str:
    """Validate a layout name (clear error listing the known ones)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown export layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return layout


def to_layout(rows: pl.DataFrame, layout: str) -> pl.DataFrame:
    """Turn pool rows (POOL_COLUMNS + weight, in export order) into the columns of `layout`."""
    check_layout(layout)
    tail = [pl.col("weight").cast(pl.Float64), pl.col("id"), pl.col("domain")]
    if layout == "messages":
        return rows.select(pl.col("messages"), *tail)
    if layout == "alpaca":
        return rows.select(
            pl.col("prompt").fill_null("").alias("instruction"),
            pl.lit("").alias("input"),
            pl.col("response").fill_null("").alias("output"),
            *tail,
        )
    if layout == "sharegpt":
        el = pl.element().struct
        conv = pl.col("messages").list.eval(
            pl.struct(
                el.field("role").replace(SHAREGPT_ROLES).alias("from"),
                el.field("content").alias("value"),
            )
        )
        return rows.select(conv.alias("conversations"), *tail)
    if layout == "prompt":
        return rows.select(pl.col("prompt"), *tail)
    # preference
    sft = rows.filter(pl.col("kind") != "preference")
    if sft.height:
        raise ValueError(
            f"layout 'preference' needs preference rows, but the selection holds {sft.height} "
            f"non-preference rows (e.g. id {sft['id'][0]}): export it with layout 'messages', or select "
            "from preference rows only"
        )
    turns = pl.col("messages")
    single = (turns.list.len() == 2) & (turns.list.first().struct.field("role") == "user")
    if rows.select(single.all()).item() is not False:
        return rows.select(pl.col("prompt"), pl.col("response").alias("chosen"), pl.col("rejected"), *tail)

    def answer(col: str) -> pl.Expr:
        return pl.concat_list(pl.struct(pl.lit("assistant").alias("role"), pl.col(col).alias("content")))

    return rows.select(turns.list.slice(0, turns.list.len() - 1).alias("prompt"), answer("response").alias("chosen"),
                       answer("rejected").alias("rejected"), *tail)
