"""The series kind (``data.kind: series``): one row per time step, forecast ``horizon``
steps from the last ``window``.

prepare cleans the series and cuts it into train, val and test periods it records (the
time analogue of the split ledger); windows never let a target look ahead across a cut.
evaluate compares the model with the naive and seasonal-naive forecasts and adds
split-conformal intervals. See docs/series.md.
"""
