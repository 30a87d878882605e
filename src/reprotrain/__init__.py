"""reprotrain."""

import os as _os

# TensorFlow's C++ start-up chatter ("cpu_feature_guard", "absl::InitializeLog") is printed
# when TensorFlow is first imported, which for a stage script is before ``cli.run_main`` can
# configure logging: set the default here, where every entry point passes first.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow's CPU tensors come from malloc by default, and glibc serves every block over
# 32 MB (MobileNetV2's activations at batch 32 are 50-150 MB) with a fresh mmap, so each
# training step page-faults ~750 MB of zeroed memory in and unmaps it again: 30 % of the
# CPU time went to the kernel (measured: 3 million minor faults in 16 steps). TensorFlow's
# own best-fit-with-coalescing allocator keeps and reuses that memory: the same fine-tune
# ran 18 % faster with bit-identical weights. Read when TensorFlow runs its first op, which
# for every entry point comes after this import; ``TF_CPU_ALLOCATOR_USE_BFC=false`` opts out
# (the allocator keeps its peak, so memory is not handed back to the OS until exit; it grows
# on demand up to TF_CPU_BFC_MEM_LIMIT_IN_MB, 64 GB by default).
_os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
