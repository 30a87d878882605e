"""fetch: snapshot data.source (URL, folder, archive or CSV manifest) into data/raw.

DVC runs this on every `dvc repro` (always_changed: the source lives outside the repo);
unchanged files are not copied again, so later stages rerun only if the data changed.
Offline, a URL source is read from $REPROTRAIN_DATA_MIRROR or data.mirror.
"""

from __future__ import annotations

import logging

from reprotrain import paths
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.data.fetch import fetch

log = logging.getLogger("reprotrain.stages.fetch")


def main() -> int:
    params = load_params()
    data = params.data
    result = fetch(
        data.source,
        paths.RAW_DIR,
        mirror=data.mirror,
        sha256=data.sha256,
        digest_cache=paths.RAW_DIGEST_CACHE,
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
    return 0


if __name__ == "__main__":
    run_main(main)
