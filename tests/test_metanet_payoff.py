"""MetaNet's growth verdict on the validation error (``payoff="error"``): a growth pays off
when the error falls by more than thinning's tolerance; one that does not ends proliferation
but is kept, so that thinning starts from it.

The scripted cycles feed MetaNet chosen losses and errors (as ``tests/test_metanet.py`` does):
the loss stalls every cycle, so only the error can tell a growth that helped.
"""

import pytest
from test_metanet import _fake_trainer, _model, _script

from neuroplast.methods import build_method
from neuroplast.methods.metanet import MetaNet as _MetaNet


def MetaNet(**options) -> _MetaNet:
    """MetaNet's metabolism cycle, the behaviour these tests pin down (the default strategy is
    the width search: tests/test_metanet_search.py)."""
    return _MetaNet(**{"strategy": "metabolism", **options})


GROW = dict(proliferation="random", autophagy=False, growth_fraction=1.0, growth_min=2,
            stable_cycles=2)
# The validation loss stalls and training improves by 10 % a cycle (under the plateau
# threshold, so not memorising): every cycle is a growth's cue.
LOSSES = [(1.0 * 0.9**cycle, 0.5) for cycle in range(7)]
# 10,000 validation examples: one standard error at a 10 % error is 0.3 points.
ERRORS = [0.10, 0.10, 0.08, 0.089, 0.089, 0.089, 0.089]


def _widths(**options):
    method = MetaNet(**{**GROW, **options})
    return _script(method, _fake_trainer(_model(widths=(8,))), LOSSES, val_errors=ERRORS)


def test_a_growth_that_lowers_the_error_pays_off_where_the_loss_sees_nothing():
    # Cycle 2 stalls: 8 -> 16. Cycle 3's error (8 %) beats the best 2-cycle mean (10 %) by
    # more than the noise: paid, and the stall grows 16 -> 32. Cycles 4-5 stay at 8.9 %,
    # not below the best mean (9 %) by a standard error: that growth did not pay, and
    # proliferation ends with the layer at 32.
    assert _widths(payoff="error") == [8, 16, 32, 32, 32, 32, 32]
    # Judged on the stalled loss, the first growth never pays.
    assert _widths(payoff="loss") == [8, 16, 16, 16, 16, 16, 16]


def test_a_growth_that_did_not_pay_off_is_kept_and_thinning_starts_from_it():
    method = MetaNet(**GROW, payoff="error", thinning=0.25, min_width=4)
    trainer = _fake_trainer(_model(widths=(8,)))
    events = []
    trainer.log_event = events.append
    # Cycle 5 ends proliferation at 32, and the same stall thins the 32, not the 16 before.
    widths = _script(method, trainer, LOSSES[:6], val_errors=ERRORS)
    assert widths == [8, 16, 32, 32, 24, 24]
    assert "metanet: the last growth did not pay off; proliferation ends" in events


def test_an_error_within_the_noise_is_no_payoff():
    # On 200 examples a standard error at 10 % is 2.1 points: the fall to 8-8.9 % is luck.
    method = MetaNet(**GROW, payoff="error")
    widths = _script(method, _fake_trainer(_model(widths=(8,))), LOSSES, val_errors=ERRORS,
                     val_size=200)
    assert widths == [8, 16, 16, 16, 16, 16, 16]


def test_an_unknown_payoff_is_a_clear_error():
    with pytest.raises(ValueError, match="--metanet-payoff must be one of loss, error"):
        build_method("metanet", {"strategy": "metabolism", "payoff": "accuracy"})
