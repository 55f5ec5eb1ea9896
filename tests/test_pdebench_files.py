"""Files written the way PDEBench writes them (h5py directly, as its Data_Merge.py lays them out):
cell centres on the file's own domain, T + 1 entries in `t-coordinate`, no gamma in CFD files,
`Nu` in Burgers files. The physics ttclab reads must be the physics the file means."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from ttclab.config import ConfigError, build
from ttclab.data.datasets import DataConfig, Normalizer, SplitData, check_file
from ttclab.data.pdebench import DataError, PDEBenchFile
from ttclab.models import checkpoint, make_operator
from ttclab.problems import make_problem, physics_tags
from ttclab.rewards.arm import arm_terms
from ttclab.stages import Context
from ttclab.stages.generate import check_external, conservation_drift
from ttclab.tracking.store import Tracker

FIVE_THIRDS = 5 / 3


def pdebench_cfd(path, fields: np.ndarray, domain=(-1.0, 1.0), t_end=0.4, ndim=1) -> None:
    """fields (N, T, C, *X) in ttclab's channel order (density, Vx[, Vy], pressure)."""
    keys = ["density", "Vx", "Vy"][: 1 + ndim] + ["pressure"]
    n, t, _, *shape = fields.shape
    lo, hi = domain
    with h5py.File(path, "w") as f:
        for c, key in enumerate(keys):
            f.create_dataset(key, data=fields[:, :, c].astype(np.float32))
        for axis, m in zip(["x-coordinate", "y-coordinate"], shape):
            edges = np.linspace(lo, hi, m + 1, dtype=np.float32)  # PDEBench: centres = edges + dx/2
            f.create_dataset(axis, data=edges[:-1] + np.float32((hi - lo) / m / 2))
        f.create_dataset("t-coordinate", data=np.arange(t + 1, dtype=np.float32) * np.float32(t_end / (t - 1)))
        f.attrs["eta"], f.attrs["zeta"] = 0.01, 0.01
        if ndim == 2:
            f.attrs["M"] = 0.1


@pytest.fixture(scope="module")
def cfd1d(tmp_path_factory):
    """A 1D CFD file on (-1, 1) with gamma 5/3 physics, solved by our solver, written PDEBench's way."""
    from conftest import build_tiny_project

    cfg = build_tiny_project("euler1d", "problem.gamma=1.6666666666666667", "problem.domain=[-1,1]")
    traj = make_problem(cfg.problem).solve(4, seed=3, progress=False)
    path = tmp_path_factory.mktemp("pdebench") / "1D_CFD_Rand_Eta0.01_Zeta0.01_periodic_Train.hdf5"
    pdebench_cfd(path, traj.fields)
    return path, traj.fields, cfg


def test_domain_dx_and_frame_times_come_from_the_coordinates(cfd1d):
    path, fields, cfg = cfd1d
    problem = make_problem(cfg.problem)
    with PDEBenchFile(path, problem) as f:
        (lo, hi), = f.domain
        assert (lo, hi) == pytest.approx((-1.0, 1.0), abs=1e-6) and f.dx == pytest.approx((2 / 32,))
        assert f.n_snapshots == 9 and f.frame_times == pytest.approx(np.arange(9) * 0.05, abs=1e-6)
        found = check_file(f, problem, cfg.data)
    assert found["t_end"] == pytest.approx(0.4) and found["n_cells"] == 32
    assert problem.extent == (2.0,) and problem.dx == (2 / 32,)
    np.testing.assert_allclose(problem.cell_centres(), -1 + (np.arange(32) + 0.5) / 16)
    data = SplitData(path, problem, DataConfig(n_trajectories=4, train=0.5, val=0.25, test=0.25))
    assert sum(len(v) for v in data.indices.values()) == 4


def test_a_project_on_other_physics_gets_every_fix_in_one_line(cfd1d, tiny_project):
    path, _, _ = cfd1d
    default = make_problem(tiny_project("euler1d", "problem.n_snapshots=5").problem)  # (0, 1), gamma unset
    with PDEBenchFile(path, default) as f, pytest.raises(DataError) as err:
        check_file(f, default, DataConfig())
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "problem.domain=[0,1] but the file has [-1,1]" in message
    assert "problem.n_snapshots=5 but the file has 9" in message
    assert "the file states no gamma and problem.gamma is unset (PDEBench's CFD data uses 5/3)" in message
    assert message.endswith("fix: --set problem.domain=[-1,1] --set problem.n_snapshots=9 --set problem.gamma=1.6667")


def test_gamma_must_be_explicit_for_a_file_without_gamma(cfd1d, tiny_project):
    path, _, _ = cfd1d
    unset = make_problem(tiny_project("euler1d", "problem.domain=[-1,1]").problem)
    with PDEBenchFile(path, unset) as f, pytest.raises(DataError, match=r"no gamma.*5/3\); fix: --set problem.gamma=1.6667$"):
        check_file(f, unset, DataConfig())
    explicit = make_problem(tiny_project("euler1d", "problem.domain=[-1,1]", "problem.gamma=1.4").problem)
    with PDEBenchFile(path, explicit) as f:
        check_file(f, explicit, DataConfig())  # the user said 1.4: accepted, and the drift will show it


def test_conservation_drift_exposes_a_wrong_gamma(cfd1d, tiny_project):
    path, fields, _ = cfd1d
    drift = {}
    for gamma in (FIVE_THIRDS, 1.4):
        problem = make_problem(tiny_project("euler1d", "problem.domain=[-1,1]", f"problem.gamma={gamma}").problem)
        drift[gamma] = conservation_drift(problem, fields)
    assert drift[FIVE_THIRDS]["mass"] < 1e-6 and drift[FIVE_THIRDS]["energy"] < 1e-5
    assert drift[1.4]["energy"] > 100 * drift[FIVE_THIRDS]["energy"] and drift[1.4]["energy"] > 1e-3


class RecordingRun:
    def __init__(self):
        self.metrics, self.tag_values = {}, {}

    def log(self, metrics, step=0):
        self.metrics |= metrics

    def tags(self, tags):
        self.tag_values |= tags


def test_generate_checks_an_external_file_and_logs_its_drift(cfd1d, tiny_project):
    path, fields, _ = cfd1d
    cfg = tiny_project("euler1d", "problem.domain=[-1,1]", "problem.gamma=1.6666666666666667",
                       f"data.path={path}", "data.n_trajectories=4", "data.train=0.5", "data.val=0.25", "data.test=0.25")
    run = RecordingRun()
    check_external(make_problem(cfg.problem), cfg, run)
    expected = conservation_drift(make_problem(cfg.problem), fields.astype(np.float32))
    assert run.metrics["data/conservation/energy"] == pytest.approx(expected["energy"])
    assert run.tag_values["physics.dx"] == pytest.approx(2 / 32)


def test_conserved_totals_arm_terms_and_projection_use_the_files_grid(cfd1d):
    """Float64 by hand with dx = 2 / N from the file: totals, ARM terms and the projection."""
    path, _, cfg = cfd1d
    problem = make_problem(cfg.problem)
    with h5py.File(path, "r") as f:
        x = f["x-coordinate"][()].astype(np.float64)
        rho, v, p = (f[k][:, 2].astype(np.float64) for k in ("density", "Vx", "pressure"))
    dx = np.diff(x).mean()
    prev = torch.from_numpy(np.stack([rho, v, p], axis=1))
    rng = np.random.default_rng(0)
    cand = prev.unsqueeze(1) * torch.from_numpy(1 + 0.02 * rng.standard_normal((4, 3, 3, 1)))
    c_rho, c_v, c_p = (cand[:, :, i].numpy() for i in range(3))

    def totals(r, u, pr):
        return {"mass": r.sum(-1) * dx, "momentum": (r * u).sum(-1) * dx,
                "energy": (pr / (FIVE_THIRDS - 1) + 0.5 * r * u * u).sum(-1) * dx}

    before, after = totals(rho, v, p), totals(c_rho, c_v, c_p)
    scale = {"mass": np.abs(rho).sum(-1) * dx, "momentum": np.abs(rho * v).sum(-1) * dx,
             "energy": np.abs(p / (FIVE_THIRDS - 1) + 0.5 * rho * v * v).sum(-1) * dx}
    for k, q in problem.conserved(prev).items():
        np.testing.assert_allclose(q.numpy(), before[k], rtol=1e-12)
    terms = arm_terms(problem, cand, prev)
    for k in before:
        np.testing.assert_allclose(terms[k].numpy(), np.abs(after[k] - before[k][:, None]) / scale[k][:, None], rtol=1e-10)
    target = {k: torch.from_numpy(v_).unsqueeze(1).expand(-1, 3) for k, v_ in before.items()}
    projected = problem.project_conserved(cand, target)
    got = totals(*(projected[:, :, i].numpy() for i in range(3)))
    for k in before:
        np.testing.assert_allclose(got[k], before[k][:, None].repeat(3, 1), rtol=1e-10, atol=1e-12)


def test_burgers_nu_is_nu_over_pi(tmp_path, tiny_project):
    path = tmp_path / "1D_Burgers_Sols_Nu0.01.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("tensor", data=np.random.default_rng(0).uniform(-1, 1, (4, 9, 32)).astype(np.float32))
        f.create_dataset("x-coordinate", data=((np.arange(32) + 0.5) / 32).astype(np.float32))
        f.create_dataset("t-coordinate", data=(np.arange(10) * 0.125).astype(np.float32))
        f.attrs["Nu"] = 0.01
    wrong = make_problem(tiny_project("burgers1d").problem)  # nu = 0.01
    with PDEBenchFile(path, wrong) as f, pytest.raises(DataError, match=r"problem.nu=0.01 but the file has 0.0031831"):
        check_file(f, wrong, DataConfig())
    right = make_problem(tiny_project("burgers1d", f"problem.nu={0.01 / math.pi}").problem)
    with PDEBenchFile(path, right) as f:
        assert check_file(f, right, DataConfig())["nu"] == pytest.approx(0.01 / math.pi)
    ours = right.solve(1, seed=0, progress=False)
    assert ours.attrs["Nu"] == pytest.approx(0.01) and ours.coords["t-coordinate"].size == 10


def test_our_writer_uses_pdebench_conventions(tiny_project):
    problem = make_problem(tiny_project("euler1d", "problem.domain=[-1,1]").problem)
    traj = problem.solve(1, seed=0, progress=False)
    np.testing.assert_allclose(traj.coords["x-coordinate"], problem.cell_centres(), atol=1e-7)
    t = traj.coords["t-coordinate"]
    assert t.size == 9 + 1 and t[8] == pytest.approx(0.4) and traj.attrs["gamma"] == 1.4


@pytest.mark.parametrize("bad, match", [
    (lambda f: f.__delitem__("x-coordinate") or f.create_dataset("x-coordinate", data=np.geomspace(0.1, 1, 32)),
     "'x-coordinate' is not a uniform"),
    (lambda f: f.__delitem__("t-coordinate") or f.create_dataset("t-coordinate", data=np.arange(5.0)),
     "'t-coordinate' has 5 entries for 9 frames"),
])
def test_bad_coordinates_are_refused(tmp_path, cfd1d, bad, match):
    path, fields, cfg = cfd1d
    copy = tmp_path / "bad.h5"
    pdebench_cfd(copy, fields)
    with h5py.File(copy, "a") as f:
        bad(f)
    with pytest.raises(DataError, match=match):
        PDEBenchFile(copy, make_problem(cfg.problem))


def test_older_files_with_t_entries_for_t_frames_still_read(tmp_path, cfd1d):
    path, fields, cfg = cfd1d
    copy = tmp_path / "old.h5"
    pdebench_cfd(copy, fields)
    with h5py.File(copy, "a") as f:
        del f["t-coordinate"]
        f.create_dataset("t-coordinate", data=np.linspace(0, 0.4, 9, dtype=np.float32))
    with PDEBenchFile(copy, make_problem(cfg.problem)) as f:
        assert f.frame_times[-1] == pytest.approx(0.4)


@pytest.mark.parametrize("damage, match", [
    (lambda f: f["pressure"].__setitem__((2, 3, 5), np.nan), r"'pressure' holds NaN/Inf at index \(2, 3, 5\)"),
    (lambda f: f["Vx"].__setitem__((1, 0, 7), np.inf), r"'Vx' holds NaN/Inf at index \(1, 0, 7\)"),
    (lambda f: [f[k].__setitem__((3, 4), 0.0) for k in ("density", "Vx", "pressure")],
     "trajectory 3 frame 4 is all zeros in every dataset"),
    (lambda f: f["density"].__setitem__((0, 6, 1), -0.5), r"'density' holds a non-positive value at index \(0, 6, 1\)"),
])
def test_bad_values_name_file_dataset_and_first_index(tmp_path, cfd1d, damage, match):
    path, fields, cfg = cfd1d
    copy = tmp_path / "damaged.h5"
    pdebench_cfd(copy, fields)
    with h5py.File(copy, "a") as f:
        damage(f)
    with pytest.raises(DataError, match=match) as err:
        SplitData(copy, make_problem(cfg.problem), DataConfig(n_trajectories=4, train=0.5, val=0.25, test=0.25))
    assert str(copy) in str(err.value) and "\n" not in str(err.value)


def test_h5py_read_errors_are_one_line(monkeypatch, cfd1d):
    path, _, cfg = cfd1d

    def fail(self, *args):
        raise OSError("Can't synchronously read data (filter returned failure during read)\nmore C stack")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", fail)
    with pytest.raises(DataError, match=r"cannot read dataset 'x-coordinate' \(Can't synchronously read data") as err:
        PDEBenchFile(path, make_problem(cfg.problem))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("values, match", [
    ({"x_stride": 0}, "strides must be >= 1"),
    ({"t_stride": 0}, "strides must be >= 1"),
    ({"n_trajectories": 4}, r"train 3, val 1, test 0: every split needs >= 1 IC"),
])
def test_bad_data_config_is_a_config_error(values, match):
    with pytest.raises(ConfigError, match=match):
        build(DataConfig, values, "p.yaml", "data")


def test_x_stride_must_divide_the_grid(cfd1d):
    path, _, cfg = cfd1d
    with PDEBenchFile(path, make_problem(cfg.problem)) as f, pytest.raises(DataError, match="x_stride=3 does not divide"):
        check_file(f, make_problem(cfg.problem), DataConfig(x_stride=3))


def test_checkpoint_physics_must_match_the_project(tmp_path, cfd1d, tiny_project):
    _, _, cfg = cfd1d  # gamma 5/3 on (-1, 1)
    problem = make_problem(cfg.problem)
    model = make_operator(cfg.model, n_fields=problem.n_fields, ndim=problem.ndim)
    path = checkpoint.save(tmp_path / "op.pt", problem_cfg=cfg.to_dict()["problem"], model_cfg=cfg.to_dict()["model"],
                           normalizer=Normalizer(np.zeros(3), np.ones(3)), model=model)
    _, _, loaded = checkpoint.load_operator(path, cfg.problem)
    assert loaded.gamma == pytest.approx(FIVE_THIRDS)
    other = tiny_project("euler1d", "problem.domain=[-1,1]", "problem.gamma=1.4").problem
    with pytest.raises(checkpoint.CheckpointError, match=r"gamma=1.666.* \(project: 1.4\); run with --set problem.gamma=1.666"):
        checkpoint.load_operator(path, other)


def test_2d_projection_is_positivity_safe_and_counted(tmp_path):
    """A target that a uniform shift could reach only through negative density: the old projection
    refused silently; now it applies the largest admissible fraction and counts it."""
    from conftest import build_tiny_project

    problem = make_problem(build_tiny_project("euler2d", "problem.gamma=1.6666666666666667").problem)
    w = torch.from_numpy(problem.solve(2, seed=0, progress=False).fields[:, -1]).double()
    totals = problem.conserved(w)
    target = dict(totals) | {"mass": totals["mass"] * torch.tensor([1.001, 0.2], dtype=torch.float64)}
    counts = {}
    out = problem.project_conserved(w, target, counts)
    assert counts == {"projected": 2, "partial": 1, "refused": 0}
    after = problem.conserved(out)
    torch.testing.assert_close(after["mass"][0], target["mass"][0], rtol=1e-10, atol=0)  # full shift
    rho, p = out[:, 0], out[:, -1]
    assert (rho > 0).all() and (p > 0).all()
    assert rho[1].min() >= 0.5 * w[1, 0].min() - 1e-12  # at most halves the smallest density
    gap_before = (totals["mass"][1] - target["mass"][1]).abs()
    assert (after["mass"][1] - target["mass"][1]).abs() < 0.9 * gap_before  # moved toward the target
    nan = w.clone()
    nan[0, 0, 0, 0] = -1.0  # a candidate that is itself not positive and cannot be fixed by the shift
    counts = {}
    out = problem.project_conserved(nan, dict(totals) | {"mass": totals["mass"] * 0.2}, counts)
    assert counts["refused"] >= 1 and torch.equal(out[0], nan[0])


def test_2d_cfd_file_reads_both_axes(tmp_path):
    from conftest import build_tiny_project

    cfg = build_tiny_project("euler2d", "problem.gamma=1.6666666666666667", "data.n_trajectories=4",
                             "data.train=0.5", "data.val=0.25", "data.test=0.25")
    problem = make_problem(cfg.problem)
    fields = problem.solve(4, seed=1, progress=False).fields
    path = tmp_path / "2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_128_Train.hdf5"
    pdebench_cfd(path, fields, domain=(0.0, 1.0), t_end=cfg.problem.t_end, ndim=2)
    with PDEBenchFile(path, problem) as f:
        assert f.domain == [pytest.approx((0.0, 1.0), abs=1e-6)] * 2 and f.dx == pytest.approx((1 / 16, 1 / 16))
        assert check_file(f, problem, cfg.data)["n_cells"] == 16
    data = SplitData(path, problem, cfg.data)
    assert conservation_drift(problem, data["train"].numpy())["energy"] < 1e-5
    with h5py.File(path, "a") as f:
        f["y-coordinate"][...] = f["y-coordinate"][()] * 2  # y on (0, 2): not the x domain
    with PDEBenchFile(path, problem) as f, pytest.raises(DataError, match="is not square"):
        check_file(f, problem, cfg.data)


def test_every_run_tags_the_physics_it_used(isolated_tracking, cfd1d, tiny_project):
    """The generate run of an external file: physics.* tags (gamma resolved), drift metrics."""
    path, _, _ = cfd1d
    cfg = tiny_project("euler1d", "problem.domain=[-1,1]", "problem.gamma=1.6666666666666667", f"data.path={path}",
                       "data.n_trajectories=4", "data.train=0.5", "data.val=0.25", "data.test=0.25")
    tracker = Tracker(isolated_tracking)
    run_id, _ = Context(tracker, progress=False).run("generate", cfg)
    run = tracker.run_info(run_id)
    assert run.data.tags["physics.gamma"] == str(FIVE_THIRDS) and run.data.tags["physics.domain"] == "(-1.0, 1.0)"
    assert run.data.metrics["data/conservation/energy"] < 1e-5
    assert physics_tags(tiny_project("euler1d").problem)["physics.gamma"] == "1.4"  # unset: the value it means
