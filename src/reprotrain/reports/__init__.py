"""Reports for people: the model card (``reports.card``)."""
