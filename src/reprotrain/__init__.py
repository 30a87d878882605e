"""reprotrain: a reproducible Keras training pipeline (DVC stages tracked in MLflow).

Importing the package has no side effects: it sets no environment variables and configures
nothing. What a stage or command process needs (TensorFlow's allocator and log level,
logging) is set where that process starts, by ``reprotrain.cli.run_main``; notebooks and
scripts use :mod:`reprotrain.api`.
"""
