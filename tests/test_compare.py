"""compare's table on constructed runs: the best single member of an ensemble comparison and the
within-noise flag, from known metrics (no training)."""

import pytest

from ttclab.stages.compare import aggregate, best_member, interval, table, with_best_members, within_noise

FINAL = 2


def seed_metrics(members: list[float], gain: float, gain_vs: dict[int, tuple[float, float, float]], proj=False) -> dict:
    """One ttc run's logged metrics: member i's final MSE, the row's SampleGain (bootstrap [gain - 1, gain + 1])
    and its gain over each member (mean, ci_lo, ci_hi)."""
    m = {f"rollout_nrmse/h{FINAL}": 0.1, f"rollout_mse/h{FINAL}": 1.0, "sample_gain/mean": gain,
         "sample_gain/ci_lo": gain - 1.0, "sample_gain/ci_hi": gain + 1.0, "cost/forward_per_step": 3.0}
    for i, mse in enumerate(members):
        m[f"control/member{i}/rollout_mse/h{FINAL}"] = mse
        m[f"control/member{i}/sample_gain/mean"] = 100.0 * (3.0 - mse) / 3.0  # baseline (unprojected member 0): 3
    for i, (mean, lo, hi) in gain_vs.items():
        m |= {f"gain_vs/member{i}/mean": mean, f"gain_vs/member{i}/ci_lo": lo, f"gain_vs/member{i}/ci_hi": hi}
    return m


def test_best_member_is_the_lowest_final_mse_mean_over_seeds_and_each_row_gains_over_it():
    # Seed 0 alone would pick member 1 (1.0); over both seeds member 2 is best (2.25 < 3.0 < 3.0).
    plain = [seed_metrics([3.0, 1.0, 2.0], 5.0, {2: (4.0, 3.0, 5.0)}),
             seed_metrics([3.0, 5.0, 2.5], 5.0, {2: (6.0, 5.0, 7.0)})]
    # Projected, member 0 is best (its projected rollout is no longer the baseline's 3.0).
    projected = [seed_metrics([0.5, 1.0, 2.0], 20.0, {0: (-1.0, -3.0, 1.0)}) for _ in range(2)]
    rows = [("baseline", "b", aggregate(plain), ["b"]), ("arm", "a", aggregate(plain), ["a"]),
            ("arm+proj", "p", aggregate(projected), ["p"])]
    assert best_member(rows[1][2], FINAL) == 2 and best_member(rows[2][2], FINAL) == 0
    shown = with_best_members(rows, FINAL)
    assert [r[0] for r in shown] == ["baseline", "best member (member2)", "arm", "arm+proj", "best member (member0)+proj"]
    header, body = table(shown)
    cells = {line[0]: dict(zip(header, line)) for line in body}
    assert cells["best member (member2)"][f"MSE h{FINAL}"] == "2.250e+00 ± 2.500e-01"
    assert cells["best member (member2)"]["SampleGain mean %"] == "+25.0 ± 8.3"  # (3 - 2) / 3, (3 - 2.5) / 3
    assert cells["best member (member2)"]["fwd/IC/step"] == "1.0 ± 0.0" and cells["best member (member2)"]["run s"] == "-"
    assert cells["arm"]["vs best member %"] == "+5.0"  # mean 5 +- 1.96 * 1, bootstrap [4, 6]: excludes 0
    assert cells["arm+proj"]["vs best member %"] == "-1.0 (noise)"  # vs projected member 0, [-3, 1]
    assert cells["best member (member0)+proj"][f"MSE h{FINAL}"] == "5.000e-01 ± 0.000e+00"


def test_runs_without_member0_controls_have_no_best_member():
    m = aggregate([seed_metrics([3.0, 1.0], 5.0, {1: (4.0, 3.0, 5.0)})])
    del m[f"control/member0/rollout_mse/h{FINAL}"]  # logged before member 0 was a control
    assert best_member(m, FINAL) is None and with_best_members([("arm", "a", m, ["a"])], FINAL) == [("arm", "a", m, ["a"])]
    header, body = table([("arm", "a", m, ["a"])])
    assert body[0][header.index("vs best member %")] == "-"


def test_seed_independent_candidates_are_within_noise_when_the_ics_scatter():
    # Three seeds with equal gains (s.e. 0: the candidates do not depend on the seed), each run's
    # bootstrap interval over ICs [-1, 7]: the ICs' scatter decides, and the CI column shows it.
    m = aggregate([{"sample_gain/mean": 3.0, "sample_gain/ci_lo": -1.0, "sample_gain/ci_hi": 7.0,
                    f"rollout_nrmse/h{FINAL}": 0.1} for _ in range(3)])
    assert m["sample_gain/mean/se"] == 0.0 and interval(m) == (-1.0, 7.0) and within_noise(m)
    header, body = table([("arm", "a", m, ["a", "b", "c"])])
    assert body[0][header.index("95% CI")] == "[-1.0, +7.0]" and body[0][header.index("within noise")] == "yes"
    # Seeds that scatter widen it: means 1 and 9 (s.e. 4) with intervals [0.5, 1.5] and [8.5, 9.5].
    wide = aggregate([{"sample_gain/mean": g, "sample_gain/ci_lo": g - 0.5, "sample_gain/ci_hi": g + 0.5} for g in (1.0, 9.0)])
    assert interval(wide) == pytest.approx((5.0 - 1.96 * 4.0, 5.0 + 1.96 * 4.0)) and within_noise(wide)
    assert not within_noise(aggregate([{"sample_gain/mean": 5.0, "sample_gain/ci_lo": 4.0, "sample_gain/ci_hi": 6.0}] * 2))
