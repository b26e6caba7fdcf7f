"""The typed Result: status derived once (error > failed > not_run > passed), exit codes, the
report@1 keys, and a round trip through its dict (what a results store reads back)."""

from __future__ import annotations

import json

import pytest

from edge_export.report.result import Result, exit_code, failure_lines
from edge_export.report.schema import to_json

CONTRACT_KEYS = ["target", "recipe", "precision", "status", "bundle", "artifact", "size_bytes", "accuracy",
                 "latency", "latency_by_device", "error", "timings_s"]  # fmt: skip
GATE_FAIL = {"measured_on": "host", "metrics": {"sqnr_db": 3.0}, "gates": [], "failure": "onnx:fp32: sqnr_db"}
PASSED = {"measured_on": "host", "metrics": {"sqnr_db": 40.0}, "gates": [], "failure": None}
NOT_RUN = {"measured_on": None, "not_run": "needs macOS", "metrics": {}, "gates": []}
DEVICE_ERROR = {"device": "pi", "error": {"type": "DeviceError", "message": "device 'pi': unreachable"}}
DEVICE_GATE = {"device": "pi", "p50_ms": 1.0, "accuracy": {"failure": "onnx:fp32 on pi: sqnr_db"}}


def _result(**fields: object) -> Result:
    return Result("onnx", "onnx:fp32", "fp32", produced=True, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({}, "passed"),
        ({"accuracy": PASSED}, "passed"),
        ({"accuracy": GATE_FAIL}, "failed"),
        ({"accuracy": PASSED, "residency_failure": "3 operators outside the delegate"}, "failed"),
        ({"accuracy": PASSED, "latency_by_device": [DEVICE_GATE]}, "failed"),
        ({"accuracy": NOT_RUN}, "not_run"),
        ({"accuracy": NOT_RUN, "latency_by_device": [DEVICE_GATE]}, "failed"),
        ({"latency_by_device": [{"device": "mac", "not_run": "needs macOS"}]}, "not_run"),
        ({"accuracy": GATE_FAIL, "error": {"type": "ExportError", "message": "x"}}, "error"),
        ({"latency_by_device": [DEVICE_ERROR]}, "passed"),
    ],
)
def test_status_is_derived(fields: dict, status: str) -> None:
    assert _result(**fields).status == status


def test_no_artifact_is_an_error() -> None:
    assert Result("onnx", "onnx:fp32", "fp32").status == "error"


def test_largest_exit_code_wins() -> None:
    passed, failed = _result(accuracy=PASSED), _result(accuracy=GATE_FAIL)
    error = _result(error={"type": "ExportError", "message": "x"})
    device = _result(accuracy=PASSED, latency_by_device=[DEVICE_ERROR])
    assert exit_code([passed]) == 0 and exit_code([_result(accuracy=NOT_RUN)]) == 0
    assert exit_code([passed, failed]) == 1
    assert exit_code([failed, error]) == 3
    assert exit_code([error, device]) == 4


def test_dict_has_the_contract_keys_and_round_trips() -> None:
    result = _result(accuracy=GATE_FAIL, latency_by_device=[DEVICE_GATE, DEVICE_ERROR], notes=["a note"],
                     inspect={"ops": {}}, residency_failure="r", timings_s={"export": 1.0})  # fmt: skip
    entry = result.to_dict()
    assert list(entry)[: len(CONTRACT_KEYS)] == CONTRACT_KEYS
    assert entry["latency"] == DEVICE_GATE and entry["status"] == "failed"
    assert entry["device_failures"] == ["onnx:fp32 on pi: sqnr_db"] and entry["notes"] == ["a note"]
    assert Result.from_dict(json.loads(json.dumps(entry))).to_dict() == entry
    minimal = _result().to_dict()
    assert list(minimal) == CONTRACT_KEYS  # optional keys only when they carry something


def test_failure_lines_come_from_the_results() -> None:
    report = {"results": [_result(accuracy=GATE_FAIL, latency_by_device=[DEVICE_ERROR]).to_dict(),
                          _result(accuracy=PASSED).to_dict()]}  # fmt: skip
    assert failure_lines(report) == ["onnx:fp32: sqnr_db", "device 'pi': unreachable"]


def test_json_is_strict() -> None:
    text = to_json({"value": float("inf"), "nested": [float("nan")]})
    assert json.loads(text) == {"value": "inf", "nested": ["nan"]}
