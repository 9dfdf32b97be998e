"""TuneFleet: hyperparameter search for transfer learning, on Optuna and a fleet of GPU workers."""

__version__ = "0.1.0"
