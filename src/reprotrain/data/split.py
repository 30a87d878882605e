"""Deterministic, stratified, growth-stable split assignment by content hash.

Why hashing instead of shuffling: a shuffled split changes completely when one image is
added, so yesterday's test images become today's training images and the two runs cannot
be compared (and the new model has seen the old test set). Here each image's split depends
only on ``(seed, its content hash, its class)``: adding images never moves an existing one.
Thresholds apply within each class, so every class gets the same expected shares
(stratified); identical files always get the same split (no duplicate leakage).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping

from reprotrain.errors import DataError

SPLITS = ("train", "val", "test")


def unit_score(seed: int, sha256: str, salt: str = "") -> float:
    """A uniform number in [0, 1) fixed by seed, content hash and salt."""
    digest = hashlib.sha256(f"{seed}:{salt}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(
    sha256: str,
    given: str | None,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    test_from_val: float,
    has_val: bool,
    has_test: bool,
) -> str:
    """The split of one image.

    * no given split → test / val / train by ``test_fraction`` and ``val_fraction``;
    * a given ``test`` or ``train`` (with a ``val`` split present) is kept;
    * a given ``val`` without a ``test`` split: ``test_from_val`` of it becomes test;
    * a given ``train`` without a ``val`` split: a ``val_fraction`` share becomes val
      (and test too, as if nothing was given, when there is no ``test`` split either).
    """
    score = unit_score(seed, sha256)
    if given == "train" and not has_val and not has_test:
        given = None  # only train/ given: carve val and test as if there were no splits
    if given is None:
        if score < test_fraction:
            return "test"
        if score < test_fraction + val_fraction:
            return "val"
        return "train"
    if given == "val" and not has_test:
        return "test" if unit_score(seed, sha256, "val→test") < test_from_val else "val"
    if given == "train" and not has_val:
        return "val" if unit_score(seed, sha256, "train→val") < val_fraction else "train"
    return given


def check_coverage(counts: Mapping[tuple[str, str], int], labels: Iterable[str]) -> None:
    """Every class must appear in every split: a class missing from val or test makes its
    metrics meaningless (and a missing train class cannot be learned)."""
    labels = list(labels)
    per_class = Counter()
    for (_, label), n in counts.items():
        per_class[label] += n
    for split in SPLITS:
        missing = [c for c in labels if counts.get((split, c), 0) == 0]
        if missing:
            shown = ", ".join(f"{c} ({per_class[c]} usable images)" for c in missing[:5])
            raise DataError(
                f"the {split} split has no images of class {shown}. Add images to that class "
                f"(or put some in a {split}/ folder), or adjust prepare.val_fraction / "
                "prepare.test_fraction / prepare.test_from_val"
            )
