"""The app's class: flask-openapi3's, with the generated OpenAPI document made to describe this server."""

from __future__ import annotations

import json

from flask_openapi3 import OpenAPI


class ServiceAPI(OpenAPI):
    """flask-openapi3, with its generated document corrected to describe this server exactly.

    Two things it generates do not hold here: ``components.securitySchemes`` is ``null`` when
    there are none (invalid OpenAPI), and operations that declare no 422 get one in its own
    validation-error format, which this server never sends (its 422s are ``ErrorResponse``,
    declared where they can happen). Both are fixed once, when the document is first built.
    """

    def generate_spec_json(self) -> None:
        super().generate_spec_json()
        doc = self.spec_json
        components = doc.get("components", {})
        if components.get("securitySchemes") is None:
            components.pop("securitySchemes", None)
        foreign = f"#/components/schemas/{self.validation_error_model.__name__}"
        for path_item in doc["paths"].values():
            for operation in path_item.values():
                response = operation.get("responses", {}).get(self.validation_error_status, {})
                if foreign in json.dumps(response):
                    del operation["responses"][self.validation_error_status]
        if foreign not in json.dumps(doc["paths"]):
            for name in (self.validation_error_model.__name__, "Context"):
                components.get("schemas", {}).pop(name, None)
