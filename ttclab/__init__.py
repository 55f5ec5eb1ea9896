"""ttclab: test-time computing on learned PDE simulators and process supervision of tiny recursive
controllers, tracked in MLflow and swept with Optuna."""

__version__ = "0.1.0"
