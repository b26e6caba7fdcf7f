"""Exit-code rules of the report."""

from __future__ import annotations

import json

from edge_export.report.schema import exit_code, new_result, to_json


def _result(status: str, device_error: bool = False) -> dict:
    result = new_result("onnx", "onnx:fp32", "fp32") | {"status": status}
    if device_error:
        result["latency_by_device"] = [{"device": "pi", "error": {"type": "DeviceError", "message": "x"}}]
    return result


def test_largest_code_wins() -> None:
    assert exit_code([_result("passed")]) == 0
    assert exit_code([_result("passed"), _result("failed")]) == 1
    assert exit_code([_result("failed"), _result("error")]) == 3
    assert exit_code([_result("error"), _result("passed", device_error=True)]) == 4


def test_json_is_strict() -> None:
    text = to_json({"value": float("inf"), "nested": [float("nan")]})
    assert json.loads(text) == {"value": "inf", "nested": ["nan"]}
