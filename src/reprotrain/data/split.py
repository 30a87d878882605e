"""Exactly stratified, append-only split assignment, recorded in a git-tracked ledger.

Why a ledger and not a per-image hash threshold: a threshold draws each image's split on its
own, so a class of 10 images gets no test image about 20% of the time and the shares drift
(70 images → 32/38 instead of 35/35). Counting per class hits the targets exactly, but a
count-based split moves images when the data grows unless the previous assignment is kept.
So the assignment is remembered: ``data/splits.csv`` (``sha256,label,split,present``), written by
``prepare`` and tracked by git (a ``cache: false, persist: true`` output), so a fresh clone
and ``dvc exp run --temp/--queue`` see the same history.

The rules (:func:`assign_splits`, a pure function):

* An image already in the ledger keeps its split forever (keyed by content hash, so a
  renamed or moved file keeps it too). If its label changed, the split is kept and the new
  label recorded. If a given ``train/ val/ test/`` folder now says otherwise, the ledger
  wins (yesterday's test image never becomes a training image) and the conflict is
  reported; delete ``data/splits.csv`` to re-split from scratch.
* Images are pooled per class and per kind of given split: images without a given split
  (or only a ``train/`` folder) are shared among train/val/test by ``val_fraction`` and
  ``test_fraction``; a given ``val/`` without a ``test/`` is shared between val and test by
  ``test_from_val``; a given ``train/`` with a ``test/`` but no ``val/`` gives a
  ``val_fraction`` share to val; otherwise a given folder is kept as it is.
* Each pool's target counts are ``round(n × fraction)`` (half up) of its current size, at
  least one val and one test image when the pool can spare them (3 images in a three-way
  pool, 2 in a val/test pool), and at least one train image in a three-way pool.
* New images fill the pool's splits towards the targets: taken in an order fixed by
  ``(seed, sha256)``, each goes to the split furthest below its target. The result is
  deterministic for a seed and exact on the first run; later runs stay exact unless removed
  or returning images left a split above its target (assigned images never move to
  correct that).
* Images no longer in the data keep their row, marked absent (``present`` = ``no``): the
  ledger forgets nothing, so an image that comes back gets its old split (taking the test
  images out, adding new ones and putting them back must not turn them into training
  images). Absent rows count toward nothing: targets and counts are over the images present
  now, so the present data is as exactly stratified as assigned images allow. A returning
  image reclaims its split even when that puts the split above its target; later new images
  fill the other splits first.
* A ledger written before the ``present`` column existed reads as all present. Deleting
  the ledger re-splits from scratch.
* A class with fewer than 3 usable images is an error: it cannot have an image in each
  split.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reprotrain.data.schema import SPLITS
from reprotrain.errors import DataError
from reprotrain.fsio import atomic_write_text

log = logging.getLogger(__name__)

LEDGER_COLUMNS = ("sha256", "label", "split", "present")
#: The columns of a ledger written before absent rows were kept (read as all present).
LEGACY_COLUMNS = LEDGER_COLUMNS[:3]
#: How the ``present`` column spells True and False.
PRESENT = {True: "yes", False: "no"}
#: Fewest usable images a class needs: one for each split.
MIN_CLASS_IMAGES = len(SPLITS)


@dataclass(frozen=True)
class Item:
    """One usable image: its content hash, class and given split (None: to be assigned)."""

    sha256: str
    label: str
    given: str | None


@dataclass(frozen=True)
class Entry:
    """One ledger row. ``present`` is False for an image no longer in the data: its row is
    kept so that it gets the same split back if it returns."""

    label: str
    split: str
    present: bool = True


@dataclass(frozen=True)
class Fractions:
    """The shares the splits aim for (``prepare.val_fraction`` etc.)."""

    val: float
    test: float
    test_from_val: float


@dataclass(frozen=True)
class Assignment:
    """The new ledger plus what the caller should report."""

    ledger: dict[str, Entry]  # sha256 → entry: every item given, then every absent row
    conflicts: list[tuple[str, str, str]]  # (sha256, given split, kept split)
    relabelled: list[tuple[str, str, str]]  # (sha256, old label, new label)
    removed: int  # rows whose image left the data in this run (now marked absent)
    returned: int = 0  # rows marked absent whose image is back (with its old split)


def unit_score(seed: int, sha256: str, salt: str = "") -> float:
    """A uniform number in [0, 1) fixed by seed, content hash and salt."""
    digest = hashlib.sha256(f"{seed}:{salt}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _round(x: float) -> int:
    """Half-up rounding (Python's ``round`` rounds 0.5 to even: 2.5 → 2)."""
    return math.floor(x + 0.5)


def pool_of(given: str | None, has_val: bool, has_test: bool) -> str:
    """Which splits an image may go to: ``all`` (train/val/test), ``train+val``,
    ``val+test``, or a single given split that is kept as it is."""
    if given is None or (given == "train" and not has_val and not has_test):
        return "all"
    if given == "train" and not has_val:
        return "train+val"
    if given == "val" and not has_test:
        return "val+test"
    return given


def pool_splits(pool: str) -> tuple[str, ...]:
    """The splits a pool's images may go to."""
    return SPLITS if pool == "all" else tuple(pool.split("+"))


def pool_targets(pool: str, n: int, fractions: Fractions) -> dict[str, int]:
    """Target count per split for a pool of ``n`` images (see the module docstring)."""
    if pool == "all":
        val, test = _round(n * fractions.val), _round(n * fractions.test)
        if n >= 3:
            val, test = max(1, val), max(1, test)
            while val + test > n - 1:  # keep one train image: shrink the larger share
                if val >= test:
                    val -= 1
                else:
                    test -= 1
        val, test = min(val, n), min(test, n - min(val, n))
        return {"train": n - val - test, "val": val, "test": test}
    if pool == "val+test":
        test = _round(n * fractions.test_from_val)
        if n >= 2:
            test = min(max(1, test), n - 1)
        return {"train": 0, "val": n - test, "test": min(test, n)}
    if pool == "train+val":
        val = _round(n * fractions.val)
        if n >= 2:
            val = min(max(1, val), n - 1)
        return {"train": n - min(val, n), "val": min(val, n), "test": 0}
    return {s: (n if s == pool else 0) for s in SPLITS}


def check_class_sizes(items: Iterable[Item]) -> None:
    """Every class needs at least :data:`MIN_CLASS_IMAGES` usable images."""
    sizes = Counter(i.label for i in items)
    small = sorted(c for c, n in sizes.items() if n < MIN_CLASS_IMAGES)
    if small:
        shown = ", ".join(f"{c} ({sizes[c]})" for c in small[:5])
        raise DataError(
            f"class {shown} has fewer than {MIN_CLASS_IMAGES} usable images: each class needs "
            "at least one train, one val and one test image. Add images to it or remove it"
        )


def assign_splits(
    items: Sequence[Item],
    previous: Mapping[str, Entry],
    *,
    seed: int,
    fractions: Fractions,
) -> Assignment:
    """The split of every item, keeping every assignment in ``previous`` (the old ledger,
    absent rows included: a returning image gets its old split back).

    Pure: same inputs, same output. ``items`` must have distinct ``sha256`` values
    (prepare removes duplicates first). Rows of ``previous`` whose image is not in
    ``items`` stay in the result, marked absent; they count toward no target.
    """
    check_class_sizes(items)
    given = {i.given for i in items}
    has_val, has_test = "val" in given, "test" in given
    pools: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for item in items:
        pools[(item.label, pool_of(item.given, has_val, has_test))].append(item)

    ledger: dict[str, Entry] = {}
    conflicts, relabelled = [], []
    returned = 0
    for (label, pool), members in sorted(pools.items()):
        targets = pool_targets(pool, len(members), fractions)
        counts = Counter({s: 0 for s in SPLITS})
        new = []
        for item in members:
            old = previous.get(item.sha256)
            if old is None:
                new.append(item)
                continue
            ledger[item.sha256] = Entry(label, old.split)
            counts[old.split] += 1
            returned += not old.present
            if old.label != label:
                relabelled.append((item.sha256, old.label, label))
            if item.given is not None and old.split not in pool_splits(pool):
                conflicts.append((item.sha256, item.given, old.split))
        new.sort(key=lambda i: (unit_score(seed, i.sha256), i.sha256))
        allowed = [s for s in ("test", "val", "train") if s in pool_splits(pool)]
        for item in new:
            # The split furthest below its target; ties: test, then val, then train.
            best = max(allowed, key=lambda s: (targets[s] - counts[s], -allowed.index(s)))
            ledger[item.sha256] = Entry(label, best)
            counts[best] += 1
    gone = {sha: e for sha, e in previous.items() if sha not in ledger}
    removed = sum(e.present for e in gone.values())
    ledger.update((sha, Entry(e.label, e.split, present=False)) for sha, e in gone.items())
    return Assignment(ledger, sorted(conflicts), sorted(relabelled), removed, returned)


def check_coverage(
    counts: Mapping[tuple[str, str], int],
    labels: Iterable[str],
    pinned: Mapping[str, int] | None = None,
    ledger: Path | None = None,
) -> None:
    """Every class must appear in every split: a class missing from val or test makes its
    metrics meaningless (and a missing train class cannot be learned). Reachable when given
    split folders leave a class without images for a split, or when the ledger pins a
    class's images (``pinned``: per class, images whose split ``ledger`` decided, e.g. in
    an earlier dataset of the same project) away from a split."""
    labels = list(labels)
    pinned = pinned or {}
    per_class: Counter[str] = Counter()
    for (_, label), n in counts.items():
        per_class[label] += n
    for split in SPLITS:
        missing = [c for c in labels if counts.get((split, c), 0) == 0]
        if not missing:
            continue
        shown = ", ".join(f"{c} ({per_class[c]} usable images)" for c in missing[:5])
        held = [c for c in missing if pinned.get(c)]
        if held and ledger is not None:
            c = held[0]
            raise DataError(
                f"the {split} split has no images of class {shown}: {pinned[c]} of the "
                f"{per_class[c]} images of {c} keep the split {ledger} gave them earlier (the "
                f"split ledger keeps the test set fixed). If this is a new dataset, delete "
                f"{ledger} to split it from scratch; else add images to {c}"
            )
        raise DataError(
            f"the {split} split has no images of class {shown}. Add images to that class "
            f"(or put some in a {split}/ folder), or adjust prepare.val_fraction / "
            "prepare.test_fraction / prepare.test_from_val"
        )


# --------------------------------------------------------------------------- the ledger file


def read_ledger(path: Path) -> dict[str, Entry]:
    """The previous assignment, absent rows included (empty if the file does not exist
    yet). A ledger without the ``present`` column (written by an older version) reads as
    all present, so upgrading keeps every split."""
    path = Path(path)
    if not path.is_file():
        return {}
    out: dict[str, Entry] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = tuple(reader.fieldnames or ())
        if columns not in (LEDGER_COLUMNS, LEGACY_COLUMNS):
            raise DataError(
                f"{path}: expected the columns {','.join(LEDGER_COLUMNS)}, got "
                f"{','.join(columns)}. Restore it from git "
                f"(git checkout -- {path}) or delete it to re-split from scratch"
            )
        flags = {v: k for k, v in PRESENT.items()}
        for line, row in enumerate(reader, start=2):
            split = row["split"]
            present = True if columns == LEGACY_COLUMNS else flags.get(row["present"])
            if split not in SPLITS or not row["sha256"] or not row["label"] or present is None:
                raise DataError(
                    f"{path} line {line}: bad row {row}. Restore it from git "
                    f"(git checkout -- {path}) or delete it to re-split from scratch"
                )
            out[row["sha256"]] = Entry(row["label"], split, present)
    return out


def format_ledger(ledger: Mapping[str, Entry]) -> str:
    """CSV text sorted by (label, sha256): stable, so git diffs show only real changes."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LEDGER_COLUMNS)
    for sha, e in sorted(ledger.items(), key=lambda kv: (kv[1].label, kv[0])):
        w.writerow((sha, e.label, e.split, PRESENT[e.present]))
    return buf.getvalue()


def write_ledger(path: Path, ledger: Mapping[str, Entry]) -> None:
    """Write the ledger atomically (a killed prepare leaves the old one, never half)."""
    atomic_write_text(path, format_ledger(ledger))


def report(assignment: Assignment, ledger_path: Path) -> None:
    """Log what the caller should know about kept-but-contradicted assignments."""
    if assignment.conflicts:
        shown = ", ".join(
            f"{sha[:12]} ({g}/ → kept in {s})" for sha, g, s in assignment.conflicts[:5]
        )
        log.warning(
            "%d image(s) sit in a split folder that contradicts %s; the ledger wins (an "
            "assigned image never moves): %s. Delete %s to re-split from scratch",
            len(assignment.conflicts),
            ledger_path,
            shown,
            ledger_path,
        )
    if assignment.relabelled:
        log.info("%d image(s) changed class and keep their split", len(assignment.relabelled))
    if assignment.removed:
        log.info(
            "%d image(s) left the data; %s keeps their split (marked absent) in case they return",
            assignment.removed,
            ledger_path,
        )
    if assignment.returned:
        log.info(
            "%d image(s) came back and keep the split %s gave them before",
            assignment.returned,
            ledger_path,
        )
