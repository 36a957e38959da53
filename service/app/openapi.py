"""The app's class: flask-openapi3's, with the generated OpenAPI document made to describe this server."""

from __future__ import annotations

import json

from flask_openapi3 import OpenAPI

from service.batching.queue_policy import MAX_TIMEOUT_MICROSECONDS
from service.protocols import rollout_key, timeouts

# The headers every inference route reads (protocols/timeouts.py, protocols/rollout_key.py).
# flask-openapi3 replaces an operation's parameters with its path's, so they are added to the
# generated document here. Each schema admits exactly what the server takes, no more and no less.
INFERENCE_HEADERS = [
    {"name": timeouts.HEADER, "in": "header", "required": False,
     "description": "The request's deadline in microseconds from its arrival (0: none); past it, a 504 "
                    "and nothing computed. With a V2 `timeout` parameter too, the shorter counts.",
     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_TIMEOUT_MICROSECONDS}},
    {"name": rollout_key.HEADER, "in": "header", "required": False,
     "description": "Routes the request to one version of a rollout, the same for every request with "
                    "this key (UTF-8; a V2 `rollout_key` parameter wins over it).",
     "schema": {"type": "string"}},
]


def reads_inference_headers(path: str) -> bool:
    return path == "/predict" or path.endswith(":predict") or path.endswith("/infer")


class ServiceAPI(OpenAPI):
    """flask-openapi3, with its generated document corrected to describe this server exactly.

    Two things it generates do not hold here: ``components.securitySchemes`` is ``null`` when
    there are none (invalid OpenAPI), and operations that declare no 422 get one in its own
    validation-error format, which this server never sends (its 422s are ``ErrorResponse``,
    declared where they can happen). One thing it cannot declare: the inference routes' headers
    (``INFERENCE_HEADERS``). All three are fixed once, when the document is first built.
    """

    def generate_spec_json(self) -> None:
        super().generate_spec_json()
        doc = self.spec_json
        components = doc.get("components", {})
        if components.get("securitySchemes") is None:
            components.pop("securitySchemes", None)
        foreign = f"#/components/schemas/{self.validation_error_model.__name__}"
        for path, path_item in doc["paths"].items():
            for method, operation in path_item.items():
                if method == "post" and reads_inference_headers(path):
                    operation["parameters"] = [*operation.get("parameters", []), *INFERENCE_HEADERS]
                response = operation.get("responses", {}).get(self.validation_error_status, {})
                if foreign in json.dumps(response):
                    del operation["responses"][self.validation_error_status]
        if foreign not in json.dumps(doc["paths"]):
            for name in (self.validation_error_model.__name__, "Context"):
                components.get("schemas", {}).pop(name, None)
