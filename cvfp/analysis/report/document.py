"""The document model both renderers read (render.py): sections of headings, paragraphs,
tables, figures and code blocks, and the run metadata the page header shows."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Link:
    text: str
    href: str  # local relative paths or #anchors only


@dataclass
class Para:
    parts: list[str | Link]
    kind: str = ""  # "", "note" or "ref" (styling only)


@dataclass
class Heading:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    png: bytes
    caption: str


@dataclass
class Code:
    text: str
    lang: str = ""


Block = Heading | Para | Table | Figure | Code


@dataclass
class Section:
    key: str  # the HTML anchor
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self


@dataclass
class RunMeta:
    git_revision: str = "unknown"
    git_dirty: bool | None = None  # None: not known
    generated_utc: str = ""
    versions: dict[str, str] = field(default_factory=dict)  # library -> version
