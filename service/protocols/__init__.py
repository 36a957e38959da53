"""The protocols' codecs and schemas, free of any transport: bodies in, the data plane's results out.

Own JSON API (``schemas.py``, ``predict.py``), TF Serving / KServe V1 (``v1_*``), the Open Inference
Protocol over HTTP (``v2_*``), Triton's repository API (``repository.py``); the JSON reader and
writer (``json_codec.py``), content codings (``content_coding.py``) and the error body of each
protocol (``error_bodies.py``). No Flask and no grpc here: the app and the gRPC servicer call these.
"""
