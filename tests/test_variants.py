"""The variant registry: the CLI, export, the bundle and the runtime all read it."""

import pytest
from click.testing import CliRunner

from marketpulse import variants
from marketpulse.cli import main
from marketpulse.errors import MarketpulseError


def test_preference_puts_the_device_graph_first_then_the_reference():
    assert variants.preference("cpu") == ("int8", "fp32")
    assert variants.preference("cuda") == ("fp16", "fp32")
    with pytest.raises(MarketpulseError, match="use cpu or cuda"):
        variants.preference("tpu")


def test_parse_orders_by_registry_and_requires_the_reference():
    assert variants.parse(["fp16", "fp32"]) == ("fp32", "fp16")
    with pytest.raises(MarketpulseError, match="must include fp32"):
        variants.parse(["int8"])
    with pytest.raises(MarketpulseError, match="comma list of fp32, int8, fp16"):
        variants.parse(["int4", "fp32"])


def test_each_entry_names_its_file_provider_and_an_importable_builder():
    from marketpulse.export.builders import builder_for

    for v in variants.VARIANTS.values():
        assert v.file == f"model.{v.name}.onnx"
        if v.name == variants.REFERENCE:
            assert v.builder is None and v.provider == "any"
            continue
        assert v.provider == variants.PROVIDERS[v.device]
        assert callable(builder_for(v.name))


def test_cli_choices_come_from_the_registry():
    runner = CliRunner()
    result = runner.invoke(main, ["score", "--help"])
    assert result.exit_code == 0
    assert "[" + "|".join(variants.CHOICES) + "]" in result.output and len(variants.NAMES) == 3
    assert variants.CHOICES == ("auto", *variants.NAMES)
    bad = runner.invoke(main, ["export", "--model", ".", "--out", "x", "--variants", "int8"])
    assert bad.exit_code == 2 and "must include fp32" in bad.output


def test_ray_driver_plans_cuda_workers_without_a_local_gpu(tiny_bundle):
    """The Ray driver records the graph GPU actors will run by the Predictor's own rules,
    even on a driver without a CUDA provider (this machine)."""
    from marketpulse.runtime.ray_engine import planned_placement

    assert planned_placement(tiny_bundle, "cuda", None) == (variants.CUDA, "fp16")
    assert planned_placement(tiny_bundle, "cpu", None) == (variants.CPU, "int8")
    assert planned_placement(tiny_bundle, "cuda", "fp32") == (variants.CUDA, "fp32")
