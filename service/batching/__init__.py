"""Server-side batching: concurrent requests for one model version share a forward pass.

``rules.py``: what both batchers share (taking a batch, running it, the cost table per version);
``cost_table.py``: the forward pass's measured cost by batch size; ``gevent_batcher.py``: the HTTP
worker's batcher, on its gevent event loop; ``thread_batcher.py``: the gRPC process's, on threads.
"""
