"""``python -m reprotrain`` entry points: the only library code (besides stages) that reads
params.yaml and talks to MLflow on the user's behalf."""
