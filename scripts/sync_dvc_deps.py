"""Rewrite the code deps of every stage in dvc.yaml from what the stage really imports.

    python scripts/sync_dvc_deps.py          # rewrite dvc.yaml in place
    python scripts/sync_dvc_deps.py --check  # exit 1 if it would change anything

Each stage's deps under ``stages/`` and ``src/`` are replaced by its script and the
``reprotrain`` modules it imports, transitively (``tests/test_dvc_deps.py`` checks the
result); a directory is listed instead of its files when the stage imports all of them.
Other deps (data, models, metrics) and every comment are kept. Line-based on purpose: a
YAML round trip would drop dvc.yaml's comments.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_dvc_deps import SRC, stage_code  # noqa: E402


def compress(files: set[str]) -> list[str]:
    """Whole directories (all ``.py`` files imported) as one entry, the rest as files."""
    out = set(files)
    for d in sorted({str(Path(f).parent) for f in files if f.startswith("src/")}, key=len):
        all_py = {p.relative_to(REPO).as_posix() for p in (REPO / d).rglob("*.py")}
        if d != SRC.relative_to(REPO).as_posix() + "/reprotrain" and all_py <= out:
            out = (out - all_py) | {d}
    # A directory entry already covers files (and directories) under it.
    dirs = {e for e in out if (REPO / e).is_dir()}
    return sorted(e for e in out if not any(e.startswith(d + "/") for d in dirs))


def sync(text: str) -> str:
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    script = None
    in_deps = False
    for line in lines:
        if re.match(r"^  (\w+):\s*$", line):  # a new stage
            script, in_deps = None, False
        cmd = re.match(r"^    cmd: python (\S+)", line)
        if cmd:
            script = cmd.group(1)
        if re.match(r"^    deps:\s*$", line) and script:
            in_deps = True
            out.append(line)
            indent = "      - "
            out += [f"{indent}{p}\n" for p in compress(stage_code(REPO / script))]
            continue
        if in_deps:
            if not line.startswith("      "):
                in_deps = False
            elif re.match(r"^      - (src|stages)/", line):
                continue
        out.append(line)
    return "".join(out)


def main() -> int:
    path = REPO / "dvc.yaml"
    old = path.read_text(encoding="utf-8")
    new = sync(old)
    if "--check" in sys.argv:
        return int(new != old)
    path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
