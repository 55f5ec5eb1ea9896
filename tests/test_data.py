"""PDEBench HDF5 layouts: round trip, genuine-layout files, lazy subset reads, errors, atomic writes."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from ttclab.config import ConfigError
from ttclab.data import pdebench
from ttclab.data.datasets import DataConfig, SplitData, channel_stats, make_splits
from ttclab.data.pdebench import DataError, PDEBenchFile
from ttclab.problems import make_problem
from ttclab.problems.base import Trajectories, coordinates, frame_times


@pytest.fixture
def euler1d(tiny_project):
    return make_problem(tiny_project("euler1d").problem)


def random_trajectories(problem, n=5, t=6, seed=0) -> Trajectories:
    rng = np.random.default_rng(seed)
    fields = rng.uniform(0.5, 1.5, (n, t, problem.n_fields, *problem.shape)).astype(np.float32)
    coords = coordinates(problem) | {"t-coordinate": frame_times(0.4, t)}
    return Trajectories(fields, coords, {"gamma": 1.4, "seed": seed})


def write_pdebench_1d_cfd(path, fields: np.ndarray, keys=("density", "Vx", "pressure"), t_end=0.4):
    """A file as PDEBench's own 1D_CFD merge lays it out (unit domain here; tests/test_pdebench_files.py
    covers (-1, 1)): cell centres, T + 1 times, no gamma, no `ttclab` group, no problem attr."""
    n, t, _, x = fields.shape
    with h5py.File(path, "w") as f:
        for c, key in enumerate(keys):
            f.create_dataset(key, data=fields[:, :, c])
        f.create_dataset("x-coordinate", data=((np.arange(x) + 0.5) / x).astype(np.float32))
        f.create_dataset("t-coordinate", data=(np.arange(t + 1) * t_end / (t - 1)).astype(np.float32))
        f.attrs["eta"], f.attrs["zeta"] = 0.01, 0.01


@pytest.mark.parametrize("problem_name", ["euler1d", "burgers1d", "euler2d"])
def test_write_read_round_trip(tmp_path, tiny_project, problem_name):
    problem = make_problem(tiny_project(problem_name).problem)
    traj = random_trajectories(problem)
    meta = {"split_train": np.array([0, 3]), "norm_mean": np.arange(problem.n_fields, dtype=np.float32)}
    path = pdebench.write(tmp_path / "d.h5", problem, traj, meta)
    with PDEBenchFile(path, problem) as f:
        np.testing.assert_array_equal(f.read(), traj.fields)
        np.testing.assert_array_equal(f.meta("split_train"), meta["split_train"])
        np.testing.assert_array_equal(f.meta("norm_mean"), meta["norm_mean"])
        assert f.meta("split_val") is None
    with h5py.File(path, "r") as f:
        expected_keys = ["tensor"] if problem.layout == "tensor" else list(problem.fields)
        for c, key in enumerate(expected_keys):
            assert f[key].shape == (5, 6, *problem.shape) and f[key].dtype == np.float32
            np.testing.assert_array_equal(f[key][()], traj.fields[:, :, c])
        np.testing.assert_array_equal(f["t-coordinate"][()], traj.coords["t-coordinate"])
        assert f.attrs["gamma"] == 1.4 and f.attrs["problem"] == problem_name


def test_genuine_pdebench_layout_loads_with_splits_and_stats_on_the_fly(tmp_path, tiny_project):
    euler1d = make_problem(tiny_project("euler1d", "problem.gamma=1.4").problem)  # the file states no gamma
    fields = random_trajectories(euler1d, n=20, t=9).fields
    path = tmp_path / "1D_CFD_Rand_Eta0.01_Zeta0.01_periodic_Train.hdf5"
    write_pdebench_1d_cfd(path, fields)

    with PDEBenchFile(path, euler1d) as f:
        assert (f.n_trajectories, f.n_snapshots, f.spatial_shape) == (20, 9, euler1d.shape)
        assert f.meta("split_train") is None
        np.testing.assert_array_equal(f.read(), fields)

    cfg = DataConfig(n_trajectories=20, seed=3)
    data = SplitData(path, euler1d, cfg)
    expected = make_splits(20, cfg)
    parts = [data.indices[s] for s in ("train", "val", "test")]
    assert sorted(np.concatenate(parts).tolist()) == list(range(20))  # disjoint, covering all ICs
    for split, idx in expected.items():
        np.testing.assert_array_equal(data.indices[split], idx)
        torch.testing.assert_close(data[split], torch.from_numpy(fields[idx]))
    mean, std = channel_stats(fields[expected["train"]])
    torch.testing.assert_close(data.normalizer.mean, torch.from_numpy(mean))
    torch.testing.assert_close(data.normalizer.std, torch.from_numpy(std))


def test_generated_file_carries_its_splits_and_stats(tiny_project, tiny_data_file):
    cfg = tiny_project("euler1d")
    problem = make_problem(cfg.problem)
    path = tiny_data_file("euler1d")
    with PDEBenchFile(path, problem) as f:
        stored_mean = f.meta("norm_mean")
        stored_train = f.meta("split_train")
    # A different split seed must not re-split a file that stores its own splits.
    data = SplitData(path, problem, DataConfig(n_trajectories=cfg.data.n_trajectories, seed=99))
    np.testing.assert_array_equal(data.indices["train"], stored_train)
    np.testing.assert_allclose(data.normalizer.mean.numpy(), stored_mean)
    x, y = data.pairs("train", unroll=2)
    n_train, t = data["train"].shape[:2]
    assert x.shape == (n_train * (t - 2), problem.n_fields, *problem.shape)
    assert y.shape == (n_train * (t - 2), 2, problem.n_fields, *problem.shape)
    torch.testing.assert_close(y[0, 0], data["train"][0, 1])  # first window starts at t = 0


def test_reader_subset_and_strides(tiny_data_file, euler1d):
    with PDEBenchFile(tiny_data_file("euler1d"), euler1d) as f:
        full = f.read()
        subset = f.read([7, 2, 5], t_stride=2, x_stride=4)
        repeated = f.read([3, 1, 3])  # e.g. a bootstrap sample of ICs
    np.testing.assert_array_equal(subset, full[[7, 2, 5], ::2, :, ::4])
    assert subset.shape == (3, 5, 3, 8)
    np.testing.assert_array_equal(repeated, full[[3, 1, 3]])


def test_reader_rejects_out_of_range_index(tiny_data_file, euler1d):
    with PDEBenchFile(tiny_data_file("euler1d"), euler1d) as f, pytest.raises(DataError, match="out of range"):
        f.read([0, 12])


def test_missing_key_names_file_and_key(tmp_path, euler1d):
    fields = random_trajectories(euler1d).fields
    path = tmp_path / "no_pressure.h5"
    write_pdebench_1d_cfd(path, fields[:, :, :2], keys=("density", "Vx"))
    with pytest.raises(DataError) as err:
        PDEBenchFile(path, euler1d)
    message = str(err.value)
    assert str(path) in message and "'pressure'" in message and "found: Vx, density" in message


def test_bad_shape_names_file_and_key(tmp_path, euler1d):
    path = tmp_path / "ragged.h5"
    write_pdebench_1d_cfd(path, random_trajectories(euler1d).fields)
    with h5py.File(path, "a") as f:
        del f["Vx"]
        f.create_dataset("Vx", data=np.zeros((5, 6, 16), dtype=np.float32))
    with pytest.raises(DataError) as err:
        PDEBenchFile(path, euler1d)
    assert str(path) in str(err.value) and "'Vx'" in str(err.value) and "(5, 6, 16)" in str(err.value)


def test_2d_file_is_rejected_by_a_1d_problem(tmp_path, tiny_project, tiny_data_file):
    euler1d = make_problem(tiny_project("euler1d").problem)
    with pytest.raises(DataError, match="'Vx'|'density'"):
        PDEBenchFile(tiny_data_file("euler2d"), euler1d)


def test_missing_and_non_hdf5_files_are_data_errors(tmp_path, euler1d):
    with pytest.raises(DataError, match="no such data file"):
        PDEBenchFile(tmp_path / "absent.h5", euler1d)
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        PDEBenchFile(junk, euler1d)


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch, euler1d):
    """Ctrl-C after the field datasets are written but before the ttclab group: nothing appears at
    the target, no temp file is left behind, and an earlier complete file stays intact."""
    traj = random_trajectories(euler1d)
    target = tmp_path / "euler1d.h5"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(h5py.Group, "create_group", interrupt)
    with pytest.raises(KeyboardInterrupt):
        pdebench.write(target, euler1d, traj, {})
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    pdebench.write(target, euler1d, traj, {})
    before = target.read_bytes()
    monkeypatch.setattr(h5py.Group, "create_group", interrupt)
    with pytest.raises(KeyboardInterrupt):
        pdebench.write(target, euler1d, random_trajectories(euler1d, seed=1), {})
    assert list(tmp_path.iterdir()) == [target] and target.read_bytes() == before


def test_split_data_reads_at_most_n_trajectories(tmp_path, tiny_data_file, euler1d):
    path = shutil.copy(tiny_data_file("euler1d"), tmp_path / "copy.h5")
    data = SplitData(path, euler1d, DataConfig(n_trajectories=9))
    assert sum(len(v) for v in data.indices.values()) <= 9
    assert all((v < 9).all() for v in data.indices.values())
    # The stored val split of the 12-IC file is (6, 10): reading 6 ICs would leave it empty.
    with pytest.raises(ConfigError, match="train 5, val 0, test 1.*data.n_trajectories"):
        SplitData(path, euler1d, DataConfig(n_trajectories=6))


def test_a_file_on_another_grid_than_the_problem_is_refused(tiny_data_file, tiny_project):
    path = tiny_data_file("euler1d")  # 32 cells
    coarse = make_problem(tiny_project("euler1d", "problem.n_cells=16").problem)
    with pytest.raises(DataError, match=r"problem.n_cells=32") as err:
        SplitData(path, coarse, DataConfig(n_trajectories=12))
    assert str(path) in str(err.value)
    strided = SplitData(path, coarse, DataConfig(n_trajectories=12, x_stride=2))  # 32 / 2 = 16 cells
    assert strided["train"].shape[-1] == 16
