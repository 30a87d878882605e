"""reprotrain."""

import os as _os

# TensorFlow's C++ start-up chatter ("cpu_feature_guard", "absl::InitializeLog") is printed
# when TensorFlow is first imported, which for a stage script is before ``cli.run_main`` can
# configure logging: set the default here, where every entry point passes first.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
