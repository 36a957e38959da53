"""The data plane: every serving rule, free of any transport (the shape of MLServer's ``DataPlane``).

``dataplane.py``: limits, shapes, model lookup and running the model through a runner (the seam the
batchers plug into); ``diagnostics.py``: gradient checks and explanations on a copy of a served
model, bounded across processes by ``semaphore.py``. Every protocol's codec calls these, so a new
protocol adds a codec and no rules.
"""
