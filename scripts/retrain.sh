#!/usr/bin/env bash
# Retrain the model the way the scheduled CI job does (.github/workflows/retrain.yml), so the
# same steps run on a laptop: pull the DVC cache, `dvc repro`, push the cache, diff the metrics
# against the last promoted state, and keep the new dvc.lock only if the promotion gate
# (the evaluate stage, metrics/promotion.json) promoted the model.
#
# Usage (from any directory; `dvc` and `python` of the project's environment on PATH, e.g.
# `source .venv/bin/activate` or `uv run --frozen --extra cpu scripts/retrain.sh`):
#
#   scripts/retrain.sh           dvc pull → dvc repro → dvc push → dvc metrics diff → gate;
#                                if promoted: commit dvc.lock, params.yaml and the git-tracked
#                                outputs (metrics/, plots/*.csv, *.run.json, *.history.json)
#                                on a new branch (and open the PR when RETRAIN_OPEN_PR=1)
#   scripts/retrain.sh open-pr   push the branch the last promoted run committed and open its
#                                pull request (needs `gh` and GH_TOKEN, or `gh auth login`)
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
#                                 local store has no champion, so every run would be promoted)
#   GITHUB_STEP_SUMMARY, GITHUB_OUTPUT  set by GitHub Actions: the report is appended to the
#                                 job summary; outputs outcome=, promoted=, branch=, report=
# Empty variables count as unset (GitHub Actions passes a missing secret as "").
#
# Output: progress and the commands' own output on stderr; the report (promotion decision and
# `dvc metrics diff --md`) in .reprotrain/retrain/report.md; on stdout one line:
#   outcome=promoted branch=<name>   the new model is the champion; its dvc.lock is committed
#   outcome=not-promoted             gate said no (reason in the report); nothing committed,
#                                    the workspace keeps the run's dvc.lock for inspection
#   outcome=up-to-date               nothing retrained (dvc.lock unchanged): nothing to commit
#   pr=<url>                         then, with open-pr or RETRAIN_OPEN_PR=1: the pull request
#
# Exit codes: 0 done, whatever the outcome; 1 a command failed (dvc, git, gh: its output is
# above); 2 usage or set-up error (one line on stderr saying what to fix).
set -euo pipefail

die() {
  echo "retrain: error: $*" >&2
  exit 2
}
log() { echo "retrain: $*" >&2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
self="$root/scripts/$(basename "${BASH_SOURCE[0]}")"
cd "$root"
state_dir=.reprotrain/retrain
report="$state_dir/report.md"
state="$state_dir/state"

# GitHub Actions turns a secret that is not configured into an empty string; tools then try
# to use it (e.g. boto3 with an empty key) instead of falling back to their defaults.
for var in MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD \
  MLFLOW_TRACKING_TOKEN AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN \
  RETRAIN_REMOTE_URL RETRAIN_BRANCH RETRAIN_BASE_BRANCH RETRAIN_BASELINE; do
  if [[ -v $var && -z ${!var} ]]; then unset "$var"; fi
done

output() { # name=value lines for later workflow steps
  if [[ -n ${GITHUB_OUTPUT:-} ]]; then printf '%s\n' "$@" >>"$GITHUB_OUTPUT"; fi
}

open_pr() {
  [[ -f $state ]] || die "no promoted run to open a pull request for ($state is missing): run scripts/retrain.sh first"
  local branch base title url
  branch="$(sed -n 's/^branch=//p' "$state")"
  base="$(sed -n 's/^base=//p' "$state")"
  title="$(sed -n 's/^title=//p' "$state")"
  command -v gh >/dev/null || die "the GitHub CLI 'gh' is not installed: https://cli.github.com"
  if [[ ${GITHUB_ACTIONS:-} == true ]]; then
    # The checkout kept no credentials (persist-credentials: false): let git push use GH_TOKEN
    # through gh, for this push only.
    [[ -n ${GH_TOKEN:-} ]] || die "GH_TOKEN is not set for the open-pr step"
    gh auth setup-git >&2
  fi
  log "pushing $branch and opening a pull request into $base"
  git push --set-upstream origin "$branch" >&2
  url="$(gh pr create --base "$base" --head "$branch" --title "$title" --body-file "$report")"
  output "pr-url=$url"
  echo "pr=$url"
}

case "${1:-}" in
  "") ;;
  open-pr)
    open_pr
    exit 0
    ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument '$1' (usage: scripts/retrain.sh [open-pr])" ;;
esac

# --- set-up checks: fail early, in one line, before anything slow -----------------------------
[[ -f dvc.yaml ]] || die "no dvc.yaml in $root"
git rev-parse --verify -q HEAD >/dev/null 2>&1 || die "$root is not a git repository with a commit"
command -v dvc >/dev/null || die "dvc is not on PATH: run 'make setup' and 'source .venv/bin/activate'"
python -c "import reprotrain" 2>/dev/null ||
  die "'python' on PATH cannot import reprotrain: run 'make setup' and 'source .venv/bin/activate'"
if [[ ${RETRAIN_REQUIRE_TRACKING_URI:-0} == 1 && -z ${MLFLOW_TRACKING_URI:-} ]]; then
  die "MLFLOW_TRACKING_URI is not set: the promotion gate needs the persistent MLflow registry \
(set the MLFLOW_TRACKING_URI secret)"
fi
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
  log "warning: uncommitted changes; a promoted dvc.lock will record them but they are not committed:"
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
log "dvc repro"
dvc repro >&2
log "dvc push"
dvc push >&2

# --- what changed ------------------------------------------------------------------------------
# Changed metrics only (DVC's default): with --all every per-class number is listed every time.
diff_md="$(dvc metrics diff "$baseline" --md)"
if (($(grep -c '^|' <<<"$diff_md") <= 2)); then diff_md="No metric changed."; fi # header only
promotion=metrics/promotion.json
[[ -f $promotion ]] || die "$promotion was not written: the evaluate stage must write the promotion decision"
fields="$(
  python - "$promotion" <<'PY'
import json
import sys

try:
    with open(sys.argv[1]) as f:
        d = json.load(f)
    promoted = d["promoted"]
    if not isinstance(promoted, bool):
        raise TypeError("'promoted' must be true or false")
except (OSError, ValueError, KeyError, TypeError) as e:
    sys.exit(f"retrain: error: {sys.argv[1]}: {e}")
version = d.get("version")
print("true" if promoted else "false")
print(d.get("alias") or "none")
print("" if version is None else version)
print(" ".join(str(d.get("reason") or "no reason given").split()))
PY
)" || exit 2
mapfile -t f <<<"$fields"
promoted="${f[0]}" alias="${f[1]}" version="${f[2]}" reason="${f[3]}"

if git cat-file -e HEAD:dvc.lock 2>/dev/null && git diff --quiet HEAD -- dvc.lock; then
  outcome=up-to-date
  headline="nothing retrained: dvc.lock is unchanged, so there is nothing to promote"
elif [[ $promoted == true ]]; then
  outcome=promoted
  headline="promoted: model version ${version:-?} is the new $alias — $reason"
else
  outcome=not-promoted
  headline="not promoted (alias $alias${version:+, version $version}): $reason"
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
    sed 's/^#/###/' reports/model_card.md
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

if [[ $outcome != promoted ]]; then
  output "outcome=$outcome" "promoted=false" "branch=" "report=$root/$report"
  echo "outcome=$outcome"
  exit 0
fi

# --- promoted: keep the new state on a branch ---------------------------------------------------
branch="${RETRAIN_BRANCH:-retrain/$(date -u +%Y%m%d-%H%M%S)${GITHUB_RUN_ID:+-$GITHUB_RUN_ID}}"
title="Retrain: model version ${version:-?} is the new $alias"
paths=()
for p in dvc.lock params.yaml data models metrics plots reports; do
  if [[ -e $p ]]; then paths+=("$p"); fi
done
git switch -q -c "$branch"
# DVC git-ignores its cached outputs, so this adds only the small git-tracked files.
git add -A -- "${paths[@]}"
git commit -q -m "$title" -m "$reason"
printf 'branch=%s\nbase=%s\ntitle=%s\n' "$branch" "$base" "$title" >"$state"
log "committed the new dvc.lock on branch $branch"
output "outcome=promoted" "promoted=true" "branch=$branch" "report=$root/$report"
echo "outcome=promoted branch=$branch"
if [[ ${RETRAIN_OPEN_PR:-0} == 1 ]]; then open_pr; fi
