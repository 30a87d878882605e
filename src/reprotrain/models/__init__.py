"""Model builders: transfer backbones (``transfer``, ``backbones``), from-scratch baselines
(``scratch``) and the one loader (``loading``).

``scratch`` is imported here because it registers its custom Keras classes
(``ResidualBlock``, ``ResidualNet``): any code that loads a saved baseline through
``reprotrain.models`` can then deserialise it with ``safe_mode=True``.
"""

from reprotrain.models import scratch as scratch
