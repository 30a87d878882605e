"""Serving: exported formats (``serving.export``) and the photo-taking MLflow model
(``serving.pyfunc``). With ``tracking/``, the only place that imports mlflow."""
