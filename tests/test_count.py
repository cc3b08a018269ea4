"""Parameter and MAC counts against hand-computed formulas."""

import neuroplast as npl
from neuroplast.models import build_model


def test_lenet5_counts_match_the_formulas():
    count = npl.count_model(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    macs = {layer.name: layer.macs for layer in count.layers}
    assert macs["conv1"] == 24 * 24 * 20 * 25
    assert macs["conv2"] == 8 * 8 * 50 * 20 * 25
    assert macs["fc1"] == 800 * 500 and macs["out"] == 500 * 10
    assert count.macs == 288_000 + 1_600_000 + 400_000 + 5_000
    assert count.params == (20 * 25 + 20) + (50 * 500 + 50) + (800 * 500 + 500) + (500 * 10 + 10)
    assert "total" in count.table()


def test_counts_follow_a_prune():
    model = build_model("lenet300", (1, 28, 28), 10)
    npl.prune_units(model, "fc1", list(range(100)))
    count = npl.count_model(model, (1, 28, 28))
    assert count.params == npl.count_parameters(model) == 784 * 100 + 100 + 100 * 100 + 100 + 1010
    assert count.macs == 784 * 100 + 100 * 100 + 100 * 10
