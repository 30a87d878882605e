"""fetch: snapshot data.source (URL, folder, archive or CSV manifest) into data/raw.

For data.kind table or series the source is one CSV/TSV/Parquet file (or a URL, archive or
folder holding one), snapshotted as data/raw/<its name> (reprotrain.data.file_fetch).

DVC runs this on every `dvc repro` (always_changed: the source lives outside the repo);
unchanged files are not copied again, so later stages rerun only if the data changed.
Offline, a URL source is read from $REPROTRAIN_DATA_MIRROR or data.mirror. What the source
may bring (regular files; links that stay inside it) and what an archive may expand to
(data.archive_max_*) are checked before data/raw is touched; what is left out is listed
with its reason in data/raw/.fetch-quarantine.csv and in the log.
"""

from __future__ import annotations

import logging

from reprotrain import paths
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.data.fetch import SnapshotState, fetch
from reprotrain.data.origin import ArchiveLimits
from reprotrain.data.quarantine import FETCH_REPORT

log = logging.getLogger("reprotrain.stages.fetch")

#: fetch's record of each snapshotted file's source stamp (size, mtime, inode, ctime): not
#: data, so outside data/raw, beside the digest cache.
SYNC_STATE = paths.RAW_DIGEST_CACHE.with_name("raw-sources.json")
#: Quarantined entries shown in the log (all of them are in the report).
SHOWN = 10


def main() -> int:
    params = load_params()
    data = params.data
    limits = ArchiveLimits(
        max_gb=data.archive_max_gb,
        max_ratio=data.archive_max_ratio,
        max_members=data.archive_max_members,
    )
    if data.kind != "images":
        from reprotrain.data.file_fetch import fetch_file

        result = fetch_file(
            data.source, paths.RAW_DIR, mirror=data.mirror, sha256=data.sha256, limits=limits
        )
        log.info(
            "fetch: %s source %s → %s (%s), digest %s",
            data.kind,
            result.origin,
            paths.RAW_DIR,
            "unchanged" if result.unchanged else "copied",
            result.digest,
        )
        return 0
    result = fetch(
        data.source,
        paths.RAW_DIR,
        mirror=data.mirror,
        sha256=data.sha256,
        state=SnapshotState(digest_cache=paths.RAW_DIGEST_CACHE, sync_state=SYNC_STATE),
        limits=limits,
    )
    log.info(
        "fetch: %s source %s → %s: %d files (%d copied, %d unchanged, %d removed), digest %s",
        result.kind,
        result.origin,
        paths.RAW_DIR,
        result.files,
        result.copied,
        result.unchanged,
        result.removed,
        result.digest,
    )
    if result.quarantined:
        shown = "\n".join(f"  {q.path}: {q.reason}" for q in result.quarantined[:SHOWN])
        more = len(result.quarantined) - SHOWN
        log.warning(
            "fetch left out %d entr%s of the source, listed in %s (prepare quarantines them):"
            "\n%s%s",
            len(result.quarantined),
            "y" if len(result.quarantined) == 1 else "ies",
            paths.RAW_DIR / FETCH_REPORT,
            shown,
            f"\n  ... and {more} more" if more > 0 else "",
        )
    return 0


if __name__ == "__main__":
    run_main(main)
