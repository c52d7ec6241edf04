"""Audits: the seeded draw, the Wilson interval and the per-bin, per-model figures (wastenet.audit)."""

from __future__ import annotations

import random

import pytest

from wastenet.audit import (AUDIT, AUTO, MANUAL, audit_draw, audit_kind, check_audit_rate, estimate, site_stats,
                            wilson_interval)


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), table I: 81/263 -> 0.2553..0.3662; 0/20 -> 0..0.1611
    low, high = wilson_interval(81, 263)
    assert low == pytest.approx(0.2553, abs=5e-4) and high == pytest.approx(0.3662, abs=5e-4)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=5e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 69)[0] == 0.0 and wilson_interval(69, 69)[1] == 1.0  # a true 0 (or 1) is inside
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_wilson_interval_covers_the_true_share_about_95_percent_of_the_time():
    rng = random.Random(0)
    for p, n in ((0.03, 40), (0.1, 100), (0.3, 25)):
        hits = 0
        for _ in range(2000):
            k = sum(rng.random() < p for _ in range(n))
            low, high = wilson_interval(k, n)
            hits += low <= p <= high
        assert 0.91 <= hits / 2000 <= 0.99, (p, n, hits / 2000)


def test_the_draw_is_a_fixed_uniform_number_per_seed_and_row():
    assert audit_draw(7, 42) == audit_draw(7, 42)
    assert audit_draw(7, 42) != audit_draw(8, 42)
    draws = [audit_draw(3, i) for i in range(1, 20001)]
    assert all(0.0 <= u < 1.0 for u in draws)
    assert sum(u < 0.02 for u in draws) / len(draws) == pytest.approx(0.02, abs=0.004)
    assert sum(draws) / len(draws) == pytest.approx(0.5, abs=0.01)


def test_kind_audits_only_automatic_decisions():
    assert audit_kind("recyclable", 0.019, 0.02) == AUDIT
    assert audit_kind("recyclable", 0.02, 0.02) == AUTO
    assert audit_kind("recyclable", 0.0, 0.0) == AUTO  # rate 0: audits off
    assert audit_kind(MANUAL, 0.0, 1.0) == MANUAL


@pytest.mark.parametrize("bad", [-0.1, 1.5, "x", None, float("nan")])
def test_audit_rate_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError):
        check_audit_rate(bad)


def _row(decision, kind, label, bin_, reviewed=None, reviewed_bin=None, reason=None, model_id="m1"):
    return {"decision": decision, "kind": kind, "label": label, "bin": bin_, "reviewed_label": reviewed,
            "reviewed_bin": reviewed_bin, "reason": reason, "model_id": model_id, "model": f"{model_id}.pt"}


def test_site_stats_estimates_contamination_per_bin_and_model():
    rows = [
        _row("recyclable", AUTO, "plastic", "recyclable"),
        _row("recyclable", AUDIT, "plastic", "recyclable", "plastic", "recyclable"),
        _row("recyclable", AUDIT, "glass", "recyclable", "trash", "landfill"),      # wrong bin
        _row("recyclable", AUDIT, "metal", "recyclable", "glass", "recyclable"),   # right bin, wrong class
        _row("recyclable", AUDIT, "paper", "recyclable"),                          # drawn, not labelled
        _row("landfill", AUDIT, "trash", "landfill", "trash", "landfill"),
        _row(MANUAL, MANUAL, "paper", "recyclable", "paper", "recyclable", reason="low_confidence"),
        _row(MANUAL, MANUAL, "paper", "recyclable", "trash", "landfill", reason="unknown"),
        _row("error", AUTO, None, None),
        _row("recyclable", AUDIT, "glass", "recyclable", "trash", "landfill", model_id="m2"),
    ]
    stats = site_stats(rows)
    assert [m["model_id"] for m in stats["models"]] == ["m1", "m2"]
    m1 = stats["models"][0]
    rec = m1["bins"]["recyclable"]
    assert rec["decisions"] == 7 and rec["audits_drawn"] == 4 and rec["audits_labelled"] == 3
    assert rec["contamination"]["k"] == 1 and rec["contamination"]["n"] == 3
    assert rec["contamination"]["value"] == pytest.approx(1 / 3)
    assert rec["contamination"]["show_value"] is False  # under 30 labelled audits: the interval only
    assert rec["auto_class_accuracy"]["k"] == 1
    assert rec["manual_sort_share"] == pytest.approx(2 / 7)
    assert rec["manual_sort_by_reason"] == {"low_confidence": pytest.approx(1 / 7), "unknown": pytest.approx(1 / 7)}
    assert rec["manual_sort_model_right"]["k"] == 1 and rec["manual_sort_model_right"]["n"] == 2
    assert m1["bins"]["landfill"]["contamination"]["k"] == 0
    assert m1["all"]["decisions"] == 8  # the error row is not a decision
    assert stats["models"][1]["bins"]["recyclable"]["contamination"]["k"] == 1


def test_estimate_says_when_a_percentage_may_be_shown():
    assert estimate(1, 30)["show_value"] is True
    assert estimate(0, 0)["value"] is None
