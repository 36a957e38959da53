"""Triton's model configuration and statistics extensions, judged by tritonclient
(``get_model_config``, ``get_inference_statistics``) against the gunicorn server and the container:
the configuration tells the truth about each model, and the statistics move with traffic from
every protocol, summed over both workers."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.conftest import served_version
from tests.integration.conftest import SERVER_ENV

http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

DIMS = {"xor": ([2], 2), "digits": ([5, 5], 5), "mnist": ([28, 28], 10)}


@pytest.fixture(scope="module")
def client(base_url):
    with http.InferenceServerClient(base_url.split("//")[1]) as c:
        yield c


def test_server_metadata_lists_the_extensions(client):
    extensions = client.get_server_metadata()["extensions"]
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(extensions)


@pytest.mark.parametrize("name", sorted(DIMS))
def test_model_configuration(client, name):
    dims, classes = DIMS[name]
    config = client.get_model_config(name)
    assert config == client.get_model_config(name, served_version(name).name)
    assert config["name"] == name and config["platform"] == "numpy"
    assert config["max_batch_size"] == int(SERVER_ENV["MAX_BATCH"])
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": dims, "format": "FORMAT_NONE"}]
    assert config["output"] == [
        {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [classes]},
        {"name": "label", "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []}}]
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["instance_group"] == [{"name": name, "kind": "KIND_CPU", "count": int(SERVER_ENV["WORKERS"])}]
    # the answering worker batches (BATCHING's default), opportunistically: no queue delay, no preferred sizes
    assert config["dynamic_batching"] == {"preferred_batch_size": [], "max_queue_delay_microseconds": 0}
    assert "sequence_batching" not in config
    assert config["model_transaction_policy"] == {"decoupled": False}


def test_configuration_errors_name_the_model_or_version(client):
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config("resnet")
    assert info.value.status() == "404" and "unknown model 'resnet'" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config("xor", "7")
    assert info.value.status() == "404" and "no version 7" in info.value.message()


def stat_of(client, name: str) -> dict:
    (stat,) = client.get_inference_statistics(name)["model_stats"]
    assert stat["name"] == name and stat["version"] == "1"
    return stat


def test_statistics_move_with_traffic_from_every_protocol(base_url, client):
    before = stat_of(client, "digits")
    x = np.zeros((3, 5, 5), np.float32)
    tensor = http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    for _ in range(4):  # 4 requests of 3 samples over tritonclient's connection
        client.infer("digits", [tensor])

    def fresh_connection(i: int) -> int:  # each on its own connection: both workers take some
        if i % 3 == 0:
            r = requests.post(f"{base_url}/predict", json={"model": "digits", "inputs": x[:2].tolist()}, timeout=30)
        elif i % 3 == 1:
            r = requests.post(f"{base_url}/v1/models/digits:predict", data=json.dumps({"instances": x[:2].tolist()}),
                              timeout=30)
        else:
            body = {"inputs": [{"name": "input", "shape": [2, 25], "datatype": "FP32", "data": [0] * 50}]}
            r = requests.post(f"{base_url}/v2/models/digits/infer", data=json.dumps(body), timeout=30)
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(fresh_connection, range(24))) == {200}  # 24 requests of 2 samples
    bad = {"inputs": [{"name": "input", "shape": [1, 25], "datatype": "FP32", "data": [7] * 25}]}
    assert requests.post(f"{base_url}/v2/models/digits/infer", data=json.dumps(bad), timeout=30).status_code == 400
    # a model nobody has, or a version that does not serve, is not counted anywhere
    requests.post(f"{base_url}/v2/models/nope/infer", data=json.dumps(bad), timeout=30)
    requests.post(f"{base_url}/v2/models/digits/versions/8/infer", data=json.dumps(bad), timeout=30)

    after = stat_of(client, "digits")
    runs = 4 + 24
    assert after["execution_count"] - before["execution_count"] == runs
    assert after["inference_count"] - before["inference_count"] == 4 * 3 + 24 * 2
    stats, old = after["inference_stats"], before["inference_stats"]
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[phase]["count"] - old[phase]["count"] == runs, phase
    assert stats["fail"]["count"] - old["fail"]["count"] == 1 and stats["fail"]["ns"] > old["fail"]["ns"]
    for phase in ("success", "compute_input", "compute_infer", "compute_output"):
        assert stats[phase]["ns"] > old[phase]["ns"], phase
    assert stats["success"]["ns"] >= stats["compute_infer"]["ns"] and stats["queue"]["ns"] == 0
    assert after["last_inference"] >= before["last_inference"] and after["last_inference"] > 1.7e12  # ms, not s
    assert after["batch_stats"] == []
    assert {(s["name"], s["version"]) for s in client.get_inference_statistics()["model_stats"]} == {
        (name, served_version(name).name) for name in ("digits", "mnist", "xor")}
    assert client.get_inference_statistics("digits", "1")["model_stats"][0]["execution_count"] >= runs


def test_statistics_of_what_does_not_exist_are_errors_not_entries(base_url, client):
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("resnet")
    assert info.value.status() == "404" and "unknown model 'resnet'" in info.value.message()
    r = requests.get(f"{base_url}/v2/models/xor/versions/9/stats", timeout=10)
    assert r.status_code == 404 and set(r.json()) == {"error"}
    names = {s["name"] for s in requests.get(f"{base_url}/v2/models/stats", timeout=10).json()["model_stats"]}
    assert names == {"digits", "mnist", "xor"}
    # the statistics' own series exist for model versions on record only, whatever clients named
    body = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]}
    for path in ("/v2/models/made-up/infer", "/v2/models/xor/versions/77/infer"):
        assert requests.post(f"{base_url}{path}", data=json.dumps(body), timeout=10).status_code == 404
    series = [line for line in requests.get(f"{base_url}/metrics", timeout=10).text.splitlines()
              if line.startswith(("nn_inference_", "nn_last_inference_"))]
    served = {f'model="{name}",' : f'version="{served_version(name).name}"' for name in ("digits", "mnist", "xor")}
    assert series and all(any(m in line and v in line for m, v in served.items()) for line in series)
    assert {line.split('model="')[1].split('"')[0] for line in series} <= {"digits", "mnist", "xor"}
