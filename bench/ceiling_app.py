"""The HTTP ceiling for the serving benchmark: a bare Flask route that reads the body and returns a
constant, run under the same gunicorn settings as the service (``bench/serve_load.py``)."""

from flask import Flask, request

app = Flask(__name__)
BODY = b'{"ok":true}'


@app.post("/predict")
def predict():
    request.get_data()
    return BODY, 200, {"Content-Type": "application/json"}


@app.get("/readyz")
def readyz():
    return BODY, 200, {"Content-Type": "application/json"}
