"""The published conversation layouts and how each maps to the schema (cvfp/data/chat_schema.py).

Layouts (`LAYOUTS`, detected from a record's fields by `detect_layout` or forced with
data.format): ultrachat_200k, ultrachat_original (`{"id", "data": [turns]}`), sharegpt
(`{"id", "conversations": [{from, value}]}`), openai (`{"messages": [{role, content}]}`).
`Normalizer` checks every value's type and maps a record to the schema: nothing is
converted silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from cvfp.data.chat_schema import ROLES, DataError, prompt_id

# Every record is checked by plain Python before any Arrow table is built: `datasets` would
# type a column holding one odd value as Json and quote every value of it.

LAYOUTS = ("ultrachat_200k", "ultrachat_original", "sharegpt", "openai")
FORMATS = ("auto", *LAYOUTS)
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "system": "system",
}
OPENAI_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
CHAT_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}
# How each layout maps to the schema (recorded in data/raw/stats.json).
MAPPINGS: dict[str, dict[str, str]] = {
    "ultrachat_200k": {
        "prompt": "prompt",
        "prompt_id": "prompt_id",
        "messages[].role": "messages[].role (system, user, assistant)",
        "messages[].content": "messages[].content",
    },
    "ultrachat_original": {
        "id": "prompt_id (sha256 of file:row and prompt when absent)",
        "data[i]": "messages[i] (role user for even i, assistant for odd i)",
        "data[0]": "prompt",
    },
    "sharegpt": {
        "id": "prompt_id (sha256 of file:row and prompt when absent)",
        "conversations[].from": "messages[].role (human, user -> user; gpt, chatgpt, bing, "
        "bard, assistant -> assistant; system -> system)",
        "conversations[].value": "messages[].content",
        "first user turn": "prompt",
    },
    "openai": {
        "messages[].role": "messages[].role (user, assistant, system; developer -> system)",
        "messages[].content": "messages[].content (a list of parts: its text parts joined "
        "with newlines; null: empty)",
        "first user turn": "prompt",
        "(none)": "prompt_id: sha256 of file:row and prompt",
    },
    "chatterbot": {"conversations[][i]": "messages[i] (user, assistant alternating)"},
    "text": {"line i of a block": "messages[i] (user, assistant alternating)"},
}
# Key sets that identify a layout, tried in this order.
SIGNATURES = (
    ("ultrachat_200k", {"prompt", "prompt_id", "messages"}),
    ("openai", {"messages"}),
    ("sharegpt", {"conversations"}),
    ("ultrachat_original", {"data"}),
)


def type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def detect_layout(record: object, where: str) -> str:
    """The layout a record's keys identify; a DataError naming them otherwise."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: record is {type_name(record)}, expected a JSON object")
    for layout, keys in SIGNATURES:
        if keys <= set(record):
            return layout
    raise DataError(
        f"{where}: cannot tell the layout from the fields {sorted(record)}; known layouts: "
        "ultrachat_200k (prompt, prompt_id, messages), openai (messages), sharegpt "
        "(conversations), ultrachat_original (data). Rename the fields or set data.format"
    )


class Normalizer:
    """Records of one layout -> schema records; counts roles, content parts, empties.

    `__call__(record, where)` returns the schema record, or None for an empty conversation
    (no turns, or only blank ones), which is dropped and counted."""

    def __init__(self, layout: str):
        self.layout = layout
        self.roles: dict[str, int] = {}
        self.empty = 0
        self.skipped_parts = 0

    def _str(self, value: object, where: str, field: str) -> str:
        if not isinstance(value, str):
            raise DataError(
                f"{where}: field '{field}' is {type_name(value)} ({_short(value)}), expected a "
                f"string; fix the value in the file (it is not converted)"
            )
        return value

    def _list(self, record: dict, key: str, where: str) -> list:
        if key not in record:
            raise DataError(
                f"{where}: missing field '{key}' (layout {self.layout}); found {sorted(record)}"
            )
        value = record[key]
        if not isinstance(value, list):
            fix = (
                "; use [] for an empty conversation (dropped and counted)" if value is None else ""
            )
            raise DataError(f"{where}: field '{key}' is {type_name(value)}, expected a list{fix}")
        return value

    def _role(self, raw: object, table: dict[str, str], where: str, field: str) -> str:
        raw = self._str(raw, where, field)
        if raw not in table:
            mapping = "; ".join(
                f"{', '.join(k for k in table if table[k] == v)} -> {v}"
                for v in dict.fromkeys(table.values())
            )
            raise DataError(
                f"{where}: field '{field}' has the unknown role {raw!r}; {self.layout} roles map "
                f"{mapping}. Rename the role in the file (or drop the turn)"
            )
        self.roles[raw] = self.roles.get(raw, 0) + 1
        return table[raw]

    def _content(self, value: object, where: str, field: str) -> str:
        """OpenAI content: a string, null (empty) or a list of parts (text parts joined)."""
        if value is None:
            return ""
        if isinstance(value, list):
            texts = []
            for j, part in enumerate(value):
                if not isinstance(part, dict):
                    raise DataError(
                        f"{where}: field '{field}[{j}]' is {type_name(part)}, expected a content "
                        f"part object {{type, text}}"
                    )
                if part.get("type") == "text":
                    texts.append(self._str(part.get("text"), where, f"{field}[{j}].text"))
                else:
                    self.skipped_parts += 1
            return "\n".join(texts)
        return self._str(value, where, field)

    def _id(self, record: dict, key: str | None, where: str, prompt: str) -> str:
        """The record's `key` (a string), else sha256 of file:row and the prompt."""
        if key is not None and record.get(key) is not None:
            return self._str(record[key], where, key)
        return prompt_id(prompt, where)

    def _turns(
        self,
        record: dict,
        where: str,
        fields: tuple[str, str, str],
        roles: dict[str, str],
        content: Callable[[object, str, str], str],
    ) -> list[dict]:
        """The turns of `record[key]`, `fields` = (key, role field, content field): each an
        object with both fields, its role mapped through `roles`, its content read by
        `content` (`_str`, or `_content` for OpenAI's content parts)."""
        key, role_key, content_key = fields
        turns = []
        for i, m in enumerate(self._list(record, key, where)):
            f = f"{key}[{i}]"
            if not isinstance(m, dict) or role_key not in m or content_key not in m:
                raise DataError(
                    f"{where}: field '{f}' must be an object with {role_key} and {content_key}, "
                    f"got {_short(m)}"
                )
            role = self._role(m[role_key], roles, where, f"{f}.{role_key}")
            text = content(m[content_key], where, f"{f}.{content_key}")
            turns.append({"role": role, "content": text})
        return turns

    def __call__(self, record: object, where: str) -> dict | None:
        if not isinstance(record, dict):
            raise DataError(f"{where}: record is {type_name(record)}, expected a JSON object")
        layout = self.layout
        if layout == "ultrachat_200k":
            turns = self._turns(
                record, where, ("messages", "role", "content"), CHAT_ROLES, self._str
            )
        elif layout == "openai":
            turns = self._turns(
                record, where, ("messages", "role", "content"), OPENAI_ROLES, self._content
            )
        elif layout == "sharegpt":
            turns = self._turns(
                record, where, ("conversations", "from", "value"), SHAREGPT_ROLES, self._str
            )
        elif layout == "ultrachat_original":
            turns = []
            for i, t in enumerate(self._list(record, "data", where)):
                role = ROLES[i % 2]
                self.roles[role] = self.roles.get(role, 0) + 1
                turns.append({"role": role, "content": self._str(t, where, f"data[{i}]")})
        else:
            raise DataError(f"data.format={layout!r}: not one of {list(FORMATS)}")
        if layout == "ultrachat_200k":  # checked in empty conversations too
            for key in ("prompt", "prompt_id"):
                if key not in record:
                    raise DataError(f"{where}: missing field '{key}' (layout {layout})")
            prompt = self._str(record["prompt"], where, "prompt")
            pid = self._str(record["prompt_id"], where, "prompt_id")
        if not any(m["content"].strip() for m in turns):
            self.empty += 1
            return None
        if layout != "ultrachat_200k":  # the prompt is the first user turn
            prompt = next((m["content"] for m in turns if m["role"] == "user"), "")
            id_key = None if layout == "openai" else "id"  # openai records carry no id
            pid = self._id(record, id_key, where, prompt)
        return {"prompt": prompt, "prompt_id": pid, "messages": turns}
