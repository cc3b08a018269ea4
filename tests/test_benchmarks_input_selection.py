"""The input-selection benchmark times four networks that must compute the same function."""

import sys
from pathlib import Path

import torch

import neuroplast as npl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import input_selection  # noqa: E402


def test_the_timed_variants_agree_and_have_the_stated_widths():
    variants, live = input_selection.build_variants()
    assert live.numel() == 278
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        expected = variants["zero_columns"](x)
        torch.testing.assert_close(variants["compact"](x), expected)
        torch.testing.assert_close(
            variants["hand_built"](x.flatten(1).index_select(1, live)), expected)
    # the compact model and the hand-built one hold the same parameters, all live
    assert npl.count_parameters(variants["compact"]) == npl.count_parameters(
        variants["hand_built"]) == 278 * 82 + 82 + 82 * 31 + 31 + 31 * 10 + 10
