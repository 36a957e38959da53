"""The gRPC front end: the Open Inference Protocol's ``GRPCInferenceService`` in its own processes.

``server.py`` is one process (``python -m service.grpc.server``, started by ``python -m service``);
``servicer.py`` decodes each RPC and asks the data plane, as the HTTP views do; ``calls.py`` holds
what every RPC shares (names, errors as gRPC status codes, metrics); ``extensions.py`` and
``repository.py`` are Triton's extension RPCs; ``stubs/`` the vendored ``.proto`` files and the
code generated from them.
"""
