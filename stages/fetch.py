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
from reprotrain.data.fetch import SnapshotState, fetch_source, quarantine_note, summary

log = logging.getLogger("reprotrain.stages.fetch")

#: fetch's record of each snapshotted file's source stamp (size, mtime, inode, ctime): not
#: data, so outside data/raw, beside the digest cache.
SYNC_STATE = paths.RAW_DIGEST_CACHE.with_name("raw-sources.json")


def main() -> int:
    data = load_params().data
    state = SnapshotState(digest_cache=paths.RAW_DIGEST_CACHE, sync_state=SYNC_STATE)
    result = fetch_source(data, paths.RAW_DIR, state)
    log.info("%s", summary(result, data.kind, paths.RAW_DIR))
    if note := quarantine_note(result, paths.RAW_DIR):  # what the source brought, left out
        log.warning("%s", note)
    return 0


if __name__ == "__main__":
    run_main(main)
