#!/usr/bin/env bash
# Retrain the model the way the scheduled CI job does (.github/workflows/retrain.yml), so the
# same steps run on a laptop: pull the DVC cache, `dvc repro`, push the cache, diff the metrics
# against the last promoted state, and keep the new dvc.lock only if the promotion gate
# (the evaluate stage, metrics/promotion.json) proposes the model.
#
# Nothing is promoted before review: `dvc repro` runs with REPROTRAIN_PROMOTE=challenger, so
# a version that passes the gate is registered as the `challenger` only; `champion` moves when
# the pull request is merged (`promote`, run by .github/workflows/promote.yml on the default
# branch), as a compare-and-set against the champion the gate compared with.
#
# Usage (from any directory; `dvc` and `python` of the project's environment on PATH, e.g.
# `source .venv/bin/activate` or `uv run --frozen --extra cpu scripts/retrain.sh`):
#
#   scripts/retrain.sh           dvc pull → dvc repro → dvc push → dvc metrics diff → gate;
#                                if proposed: commit dvc.lock, params.yaml and the git-tracked
#                                outputs (metrics/, plots/*.csv, *.run.json, *.history.json)
#                                on a new branch, and the model card's figures in a separate
#                                commit (retrain-assets/<branch>) that the report links to
#                                (and open the PR when RETRAIN_OPEN_PR=1)
#   scripts/retrain.sh open-pr   push the branch the last proposing run committed (and its
#                                figures' commit) and open its pull request (needs `gh` and
#                                GH_TOKEN, or `gh auth login`)
#   scripts/retrain.sh promote   after the merge: move `champion` to the version the checked-out
#                                metrics/promotion.json proposes, only if the champion is still
#                                the one it was decided against (else exit 2, nothing moved)
#
# Environment (all optional):
#   RETRAIN_BASELINE=<rev>        diff metrics against this git revision (default HEAD: what
#                                 is checked out, i.e. the last promoted state on main)
#   RETRAIN_BRANCH=<name>         branch for a promoted run (default retrain/<UTC time>[-<run id>])
#   RETRAIN_BASE_BRANCH=<name>    pull request base (default: the branch checked out at start)
#   RETRAIN_OPEN_PR=1             after committing, also push and open the pull request
#   RETRAIN_REMOTE_URL=<url>      DVC remote to use, written to .dvc/config.local (not committed);
#                                 default: the default remote of .dvc/config
#   RETRAIN_REQUIRE_TRACKING_URI=1  refuse to run without MLFLOW_TRACKING_URI (CI: a throw-away
#                                 local store has no champion, so every run would be proposed)
#   GITHUB_REPOSITORY, GITHUB_SERVER_URL  set by GitHub Actions: the report's figures link to
#                                 <server>/<repository>/raw/<figures commit>/model_card/*.png
#                                 (without them: paths relative to the report file)
#   GITHUB_STEP_SUMMARY, GITHUB_OUTPUT  set by GitHub Actions: the report is appended to the
#                                 job summary; outputs outcome=, promoted=, branch=, report=
# Empty variables count as unset (GitHub Actions passes a missing secret as "").
#
# Output: progress and the commands' own output on stderr; the report (promotion decision and
# `dvc metrics diff --md`) in .reprotrain/retrain/report.md; on stdout one line:
#   outcome=proposed branch=<name>   the gate passed: the new version is the challenger and its
#                                    dvc.lock is committed; merging the PR makes it champion
#   outcome=not-promoted             gate said no (reason in the report); nothing committed,
#                                    the workspace keeps the run's dvc.lock for inspection
#   outcome=up-to-date               nothing retrained (dvc.lock unchanged): nothing to commit
#   pr=<url>                         then, with open-pr or RETRAIN_OPEN_PR=1: the pull request
# and for `promote`: outcome=promoted version=<n> (champion moved), outcome=up-to-date (it is
# already the champion, or promotion.json proposes nothing).
#
# Exit codes: 0 done, whatever the outcome; 1 a command failed (dvc, git, gh: its output is
# above); 2 usage or set-up error, or `promote` refused because the champion moved since the
# decision (one line on stderr saying what to fix).
set -euo pipefail

die() {
  echo "retrain: error: $*" >&2
  exit 2
}
log() { echo "retrain: $*" >&2; }
vname() { if [[ $1 == none || -z $1 ]]; then echo "no champion"; else echo "v$1"; fi; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
self="$root/scripts/$(basename "${BASH_SOURCE[0]}")"
cd "$root"
state_dir=.reprotrain/retrain
report="$state_dir/report.md"
state="$state_dir/state"
promotion=metrics/promotion.json
figures_dir=reports/model_card # the model card's PNGs (a DVC output, so not in git)

# GitHub Actions turns a secret that is not configured into an empty string; tools then try
# to use it (e.g. boto3 with an empty key) instead of falling back to their defaults.
for var in MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD \
  MLFLOW_TRACKING_TOKEN AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN \
  RETRAIN_REMOTE_URL RETRAIN_BRANCH RETRAIN_BASE_BRANCH RETRAIN_BASELINE GITHUB_REPOSITORY; do
  if [[ -v $var && -z ${!var} ]]; then unset "$var"; fi
done

output() { # name=value lines for later workflow steps
  if [[ -n ${GITHUB_OUTPUT:-} ]]; then printf '%s\n' "$@" >>"$GITHUB_OUTPUT"; fi
}

# The decision evaluate wrote, one field per line: promoted, proposed, alias, version, the
# champion it was decided against (or none), the registered model, the reason (one line).
promotion_fields() {
  [[ -f $promotion ]] || die "$promotion was not written: the evaluate stage must write the promotion decision"
  python - "$promotion" <<'PY' || exit 2
import json
import sys

try:
    with open(sys.argv[1]) as f:
        d = json.load(f)
    promoted = d["promoted"]
    if not isinstance(promoted, bool):
        raise TypeError("'promoted' must be true or false")
    proposed = d.get("proposed", False)
    if not isinstance(proposed, bool):
        raise TypeError("'proposed' must be true or false")
except (OSError, ValueError, KeyError, TypeError) as e:
    sys.exit(f"retrain: error: {sys.argv[1]}: {e}")
version, against = d.get("version"), d.get("champion_version")
print("true" if promoted else "false")
print("true" if proposed else "false")
print(d.get("alias") or "none")
print("" if version is None else version)
print("none" if against is None else against)
print(d.get("registered_model") or "")
print(" ".join(str(d.get("reason") or "no reason given").split()))
PY
}

# The model card's figures as a commit of their own (no parent, not on any branch): the PR
# body and the job summary link to it, so GitHub renders the images. Relative links and
# DVC-cached files do not render in a pull request. Prints the commit's hash.
figures_commit() {
  local index="$state_dir/figures.index" blob tree png
  rm -f "$index"
  GIT_INDEX_FILE="$index" git read-tree --empty
  for png in "$figures_dir"/*.png; do
    [[ -f $png ]] || continue
    blob="$(git hash-object -w -- "$png")"
    GIT_INDEX_FILE="$index" git update-index --add --cacheinfo "100644,$blob,model_card/${png##*/}"
  done
  tree="$(GIT_INDEX_FILE="$index" git write-tree)"
  rm -f "$index"
  git commit-tree "$tree" -m "Model card figures of $1"
}

# The model card for the report, its image links rewritten: to the figures commit ($1), else
# in CI a note (nothing is pushed, so no link would resolve), else relative to the report
# file (a local Markdown viewer renders them).
card_for_report() {
  local base image='!\[([^]]*)\]\(model_card/([^)]+)\)'
  if [[ -n ${1:-} ]]; then
    base="${GITHUB_SERVER_URL:-https://github.com}/$GITHUB_REPOSITORY/raw/$1/model_card"
    sed -E -e 's/^#/###/' -e "s#$image#![\1]($base/\2)#g" reports/model_card.md
  elif [[ -n ${GITHUB_REPOSITORY:-} ]]; then
    sed -E -e 's/^#/###/' \
      -e "s#$image#*(figure \1: $figures_dir/\2, in the evaluate run's MLflow artifacts)*#g" \
      reports/model_card.md
  else
    sed -E -e 's/^#/###/' -e "s#$image#![\1](../../$figures_dir/\2)#g" reports/model_card.md
  fi
}

open_pr() {
  [[ -f $state ]] || die "no proposed run to open a pull request for ($state is missing): run scripts/retrain.sh first"
  local branch base title figures url
  branch="$(sed -n 's/^branch=//p' "$state")"
  base="$(sed -n 's/^base=//p' "$state")"
  title="$(sed -n 's/^title=//p' "$state")"
  figures="$(sed -n 's/^figures=//p' "$state")"
  command -v gh >/dev/null || die "the GitHub CLI 'gh' is not installed: https://cli.github.com"
  if [[ ${GITHUB_ACTIONS:-} == true ]]; then
    # The checkout kept no credentials (persist-credentials: false): let git push use GH_TOKEN
    # through gh, for this push only.
    [[ -n ${GH_TOKEN:-} ]] || die "GH_TOKEN is not set for the open-pr step"
    gh auth setup-git >&2
  fi
  log "pushing $branch and opening a pull request into $base"
  git push --set-upstream origin "$branch" >&2
  if [[ -n $figures ]]; then
    # The figures the body links to: their own branch, so they stay reachable after merging.
    git push origin "$figures:refs/heads/retrain-assets/$branch" >&2
  fi
  url="$(gh pr create --base "$base" --head "$branch" --title "$title" --body-file "$report")"
  output "pr-url=$url"
  echo "pr=$url"
}

# After the merge (the default branch checked out): move champion to the proposed version,
# as a compare-and-set against the champion the gate compared with.
promote_merged() {
  local fields promoted proposed version against model current reason
  fields="$(promotion_fields)" || exit 2
  mapfile -t f <<<"$fields"
  promoted="${f[0]}" proposed="${f[1]}" version="${f[3]}" against="${f[4]}" model="${f[5]}"
  if [[ $promoted == true ]]; then
    log "$promotion: v$version was promoted by the gate itself (REPROTRAIN_PROMOTE=champion): nothing to do"
    output "outcome=up-to-date" "promoted=false"
    echo "outcome=up-to-date"
    return 0
  fi
  if [[ $proposed != true ]]; then
    log "$promotion proposes no version (${f[6]}): nothing to promote"
    output "outcome=up-to-date" "promoted=false"
    echo "outcome=up-to-date"
    return 0
  fi
  [[ -n $model && -n $version ]] || die "$promotion names no registered_model and version"
  current="$(
    python - "$model" <<'PY'
import sys
from pathlib import Path

from reprotrain.commands.ui import store_uri
from reprotrain.errors import ReprotrainError
from reprotrain.tracking import registry, store

try:
    uri = store_uri(Path.cwd())
    store.check_reachable(uri)
    version = registry.champion_version(store.client(uri), sys.argv[1], uri, "nothing moved")
except ReprotrainError as e:
    sys.exit(f"retrain: error: {e}")
print("none" if version is None else version)
PY
  )" || exit 2
  if [[ $current == "$version" ]]; then
    log "$model v$version is already the champion: nothing to do"
    output "outcome=up-to-date" "promoted=false"
    echo "outcome=up-to-date"
    return 0
  fi
  reason="merged into $(git symbolic-ref --short -q HEAD || echo HEAD) as $(git rev-parse --short HEAD): $(git log -1 --format=%s)"
  log "promoting $model v$version (decided against $(vname "$against"), champion now $(vname "$current"))"
  # Refuses (exit 2, one line) when the champion is no longer the one it was decided against.
  python -m reprotrain promote "$model" "$version" --expect-champion "$against" --reason "$reason" >&2
  output "outcome=promoted" "promoted=true" "version=$version"
  echo "outcome=promoted version=$version"
}

cmd="${1:-retrain}"
case "$cmd" in
  retrain | open-pr | promote) ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument '$1' (usage: scripts/retrain.sh [open-pr | promote])" ;;
esac
if [[ $cmd == open-pr ]]; then
  open_pr
  exit 0
fi

# --- set-up checks: fail early, in one line, before anything slow -----------------------------
[[ -f dvc.yaml ]] || die "no dvc.yaml in $root"
git rev-parse --verify -q HEAD >/dev/null 2>&1 || die "$root is not a git repository with a commit"
python -c "import reprotrain" 2>/dev/null ||
  die "'python' on PATH cannot import reprotrain: run 'make setup' and 'source .venv/bin/activate'"
if [[ ${RETRAIN_REQUIRE_TRACKING_URI:-0} == 1 && -z ${MLFLOW_TRACKING_URI:-} ]]; then
  die "MLFLOW_TRACKING_URI is not set: the promotion gate needs the persistent MLflow registry \
(set the MLFLOW_TRACKING_URI secret)"
fi
if [[ $cmd == promote ]]; then
  promote_merged
  exit 0
fi
command -v dvc >/dev/null || die "dvc is not on PATH: run 'make setup' and 'source .venv/bin/activate'"
if [[ -n ${RETRAIN_REMOTE_URL:-} ]]; then
  dvc remote add --local --default --force retrain "$RETRAIN_REMOTE_URL" >&2
fi
dvc remote default >/dev/null 2>&1 ||
  die "no default DVC remote: 'dvc remote add -d storage <url>' (see docs/retraining.md) or set RETRAIN_REMOTE_URL"
baseline="${RETRAIN_BASELINE:-HEAD}"
git rev-parse --verify -q "$baseline^{commit}" >/dev/null 2>&1 || die "RETRAIN_BASELINE '$baseline' is not a git revision"
dirty="$(git status --porcelain --untracked-files=no -- . ':!dvc.lock' ':!params.yaml' \
  ':!data' ':!models' ':!metrics' ':!plots')"
if [[ -n $dirty ]]; then
  log "warning: uncommitted changes; a proposed dvc.lock will record them but they are not committed:"
  echo "$dirty" >&2
fi
base="${RETRAIN_BASE_BRANCH:-$(git symbolic-ref --short -q HEAD || echo main)}"
mkdir -p "$state_dir"
rm -f "$state" "$report"

# --- the pipeline ------------------------------------------------------------------------------
# --allow-missing: the first run (or a stage added since) finds nothing in the remote yet;
# what is missing is simply rebuilt by `dvc repro`.
log "dvc pull"
dvc pull --allow-missing >&2
log "dvc repro (REPROTRAIN_PROMOTE=challenger: a passing version is proposed, not promoted)"
REPROTRAIN_PROMOTE=challenger dvc repro >&2
log "dvc push"
dvc push >&2

# --- what changed ------------------------------------------------------------------------------
# Changed metrics only (DVC's default): with --all every per-class number is listed every time.
diff_md="$(dvc metrics diff "$baseline" --md)"
if (($(grep -c '^|' <<<"$diff_md") <= 2)); then diff_md="No metric changed."; fi # header only
fields="$(promotion_fields)" || exit 2
mapfile -t f <<<"$fields"
promoted="${f[0]}" proposed="${f[1]}" alias="${f[2]}" version="${f[3]}" against="${f[4]}"
reason="${f[6]}"

if git cat-file -e HEAD:dvc.lock 2>/dev/null && git diff --quiet HEAD -- dvc.lock; then
  outcome=up-to-date
  headline="nothing retrained: dvc.lock is unchanged, so there is nothing to promote"
elif [[ $proposed == true ]]; then
  outcome=proposed
  headline="proposed: model version ${version:-?} passed the gate against $(vname "$against") and is the $alias; merging this pull request makes it the champion — $reason"
elif [[ $promoted == true ]]; then
  outcome=promoted # evaluate ran with REPROTRAIN_PROMOTE=champion (its cached result)
  headline="promoted: model version ${version:-?} is the new $alias — $reason"
else
  outcome=not-promoted
  headline="not promoted (alias $alias${version:+, version $version}): $reason"
fi

branch="${RETRAIN_BRANCH:-retrain/$(date -u +%Y%m%d-%H%M%S)${GITHUB_RUN_ID:+-$GITHUB_RUN_ID}}"
figures=""
if [[ $outcome == proposed || $outcome == promoted ]] && [[ -n ${GITHUB_REPOSITORY:-} ]] &&
  compgen -G "$figures_dir/*.png" >/dev/null; then
  figures="$(figures_commit "$branch")"
fi

{
  echo "## Retraining: $outcome"
  echo
  echo "$headline"
  echo
  echo "### Metrics that changed: workspace vs \`$baseline\` (\`dvc metrics diff $baseline\`)"
  echo
  echo "$diff_md"
  if [[ $outcome != up-to-date && -f reports/model_card.md ]]; then
    echo
    echo "<details><summary>Model card (reports/model_card.md)</summary>"
    echo
    card_for_report "$figures"
    echo
    echo "</details>"
  fi
  if [[ -n ${GITHUB_RUN_ID:-} ]]; then
    echo
    echo "Run: ${GITHUB_SERVER_URL:-https://github.com}/${GITHUB_REPOSITORY:-}/actions/runs/$GITHUB_RUN_ID"
  fi
} >"$report"
if [[ -n ${GITHUB_STEP_SUMMARY:-} ]]; then cat "$report" >>"$GITHUB_STEP_SUMMARY"; fi
log "$headline"

if [[ $outcome != proposed && $outcome != promoted ]]; then
  output "outcome=$outcome" "promoted=false" "branch=" "report=$root/$report"
  echo "outcome=$outcome"
  exit 0
fi

# --- proposed: keep the new state on a branch ---------------------------------------------------
if [[ $outcome == proposed ]]; then
  title="Retrain: model version ${version:-?} proposed as the new champion"
else
  title="Retrain: model version ${version:-?} is the new $alias"
fi
paths=()
for p in dvc.lock params.yaml data models metrics plots reports; do
  if [[ -e $p ]]; then paths+=("$p"); fi
done
git switch -q -c "$branch"
# DVC git-ignores its cached outputs, so this adds only the small git-tracked files.
git add -A -- "${paths[@]}"
git commit -q -m "$title" -m "$reason"
printf 'branch=%s\nbase=%s\ntitle=%s\nfigures=%s\n' "$branch" "$base" "$title" "$figures" >"$state"
log "committed the new dvc.lock on branch $branch"
output "outcome=$outcome" "promoted=$promoted" "branch=$branch" "report=$root/$report"
echo "outcome=$outcome branch=$branch"
if [[ ${RETRAIN_OPEN_PR:-0} == 1 ]]; then open_pr; fi
