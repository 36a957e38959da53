"""Flask's JSON through this server's codec: orjson, strict numbers (``service/protocols/json_codec.py``)."""

from __future__ import annotations

from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider

from service.protocols.json_codec import loads


class ORJSONProvider(DefaultJSONProvider):
    """Flask's ``request.get_json`` and ``jsonify`` through the codec's ``loads`` and orjson."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=self.default, option=orjson.OPT_SERIALIZE_NUMPY).decode()
