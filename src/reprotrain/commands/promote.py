"""``python -m reprotrain promote MODEL VERSION [--reason ...]`` and
``python -m reprotrain promote MODEL --rollback [--reason ...]``: move the ``champion`` alias
by hand, with an audit trail.

Why a command: the gate in ``evaluate`` only promotes a model that beats the champion on the
same test set. When the task changes (other classes, another input size) or a bad champion
must be replaced now, a person decides; the registry must then say who, when and why, and
the move must be reversible. Each move writes version tags (``reprotrain.promoted_by``,
``reprotrain.promoted_at``, ``reprotrain.promotion_reason``, ``reprotrain.previous_champion``;
for a rollback ``reprotrain.rolled_back_by/at`` and ``reprotrain.rollback_reason`` on the
version left) and a line in the registered model's ``reprotrain.promotions`` tag. The user is
git's ``user.name`` <``user.email``>, else ``$USER``; times are UTC.

``--expect-champion N|none`` makes the move a compare-and-set against the champion a
decision was made against (the merge job passes the one ``metrics/promotion.json``
recorded): if ``champion`` is another version now, nothing moves and the command fails with
one line. Without it, the champion read when the command starts is the one compared with.

The store is the one the pipeline uses: ``MLFLOW_TRACKING_URI``, else ``tracking.store``
of the project's ``params.yaml`` (as ``ui``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Literal

from reprotrain import paths, tracking
from reprotrain.commands.ui import store_uri  # the same store as the UI shows
from reprotrain.errors import ConfigError
from reprotrain.tracking import registry

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reprotrain promote",
        description="Move the champion alias of a registered model to VERSION, or back to the "
        "previous champion with --rollback; who, when and why are recorded as version tags.",
    )
    parser.add_argument(
        "model", help="registered model name (params.yaml tracking.registered_model)"
    )
    parser.add_argument("version", nargs="?", type=int, help="version to promote")
    parser.add_argument(
        "--rollback", action="store_true", help="move champion back to the previous champion"
    )
    parser.add_argument("--reason", default=None, help="why (recorded with the move)")
    parser.add_argument(
        "--expect-champion",
        type=expected_champion,
        default=registry.CURRENT,
        metavar="N|none",
        help="refuse unless the champion is still version N (none: there is no champion); "
        "the champion the promotion was decided against",
    )
    parser.add_argument("--root", type=Path, default=None, help="project root (default: cwd)")
    parser.add_argument("--store", default=None, help="store directory (default: params.yaml)")
    return parser


def expected_champion(value: str) -> int | Literal["current"] | None:
    """``--expect-champion``: a version number, or ``none`` for "no champion yet" (the
    default, ``current``, compares with the champion read when the command starts)."""
    text = value.strip().lower()
    if text == registry.CURRENT:
        return registry.CURRENT
    if text in ("none", ""):
        return None
    if text.removeprefix("v").isdigit():
        return int(text.removeprefix("v"))
    raise argparse.ArgumentTypeError(f"expected a version number or 'none', got {value!r}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rollback == (args.version is not None):
        raise ConfigError(
            "give either a VERSION to promote or --rollback (not both): "
            "python -m reprotrain promote MODEL VERSION | MODEL --rollback"
        )
    root = paths.project_root(args.root)
    uri = store_uri(root, args.store)
    tracking.check_reachable(uri)
    user = tracking.registry.current_user(root)
    if args.rollback:
        moved = registry.rollback(uri, args.model, args.reason or "no reason given", by=user)
        verb = "rolled back"
    else:
        moved = registry.promote(
            uri,
            args.model,
            args.version,
            args.reason or "no reason given",
            by=user,
            expected=args.expect_champion,
        )
        verb = "promoted"
    previous = f"v{moved['previous']}" if moved["previous"] is not None else "none"
    sys.stdout.write(
        f"{args.model}: champion {verb} {previous} → v{moved['champion']} by {moved['by']}"
        f" ({moved['reason']})\n"
    )
    return 0
