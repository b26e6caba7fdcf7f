"""Graph hygiene: stack-trace metadata stripped, external data only above the inline limit,
tied LM heads folded so weight quantizers see them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_export.targets.onnx import graph


def _tied_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64) / 4096, "embed")
    nodes = [
        helper.make_node("Gather", ["embed", "ids"], ["hidden"]),
        helper.make_node("Transpose", ["embed"], ["embed_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["hidden", "embed_t"], ["logits"]),
    ]
    nodes[0].metadata_props.add(key="pkg.torch.onnx.stack_trace", value="File x.py, line 1")
    g = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 64])],
        [weight],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_untie_keeps_outputs_and_feeds_matmul_an_initializer() -> None:
    import onnxruntime as ort

    proto = _tied_model()
    feeds = {"ids": np.array([1, 3], dtype=np.int64)}
    before = ort.InferenceSession(proto.SerializeToString()).run(None, feeds)[0]
    assert graph.untie_transposed_weights(proto) == 1
    assert "Transpose" not in [n.op_type for n in proto.graph.node]
    matmul = next(n for n in proto.graph.node if n.op_type == "MatMul")
    assert matmul.input[1] in {t.name for t in proto.graph.initializer}
    after = ort.InferenceSession(proto.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_array_equal(before, after)


def test_save_clean_inline_and_external(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    files = graph.save_clean(_tied_model(), tmp_path / "a" / "model.onnx")
    assert [f.name for f in files] == ["model.onnx"]
    assert graph.inspect_graph(files[0])["metadata_props_on_nodes"] == 0
    monkeypatch.setattr(graph, "INLINE_LIMIT", 16)  # pretend the weights are over 2 GB
    (tmp_path / "b").mkdir()
    files = graph.save_clean(_tied_model(), tmp_path / "b" / "model.onnx")
    assert [f.name for f in files] == ["model.onnx", "model.onnx.data"]
    assert all(f.is_file() for f in files)
    reloaded = onnx.load(str(files[0]))
    assert numpy_helper.to_array(reloaded.graph.initializer[0]).shape == (64, 64)
