"""Serving: exported formats (``serving.export``, each run alike by ``serving.runners``) and
the photo-taking MLflow model (``serving.pyfunc``). With ``tracking/``, the only place that
imports mlflow."""
