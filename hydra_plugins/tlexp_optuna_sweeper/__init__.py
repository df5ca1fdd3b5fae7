"""tlexp's Optuna sweeper for Hydra (a Hydra ``Sweeper`` plugin on Optuna 4/5).

Why not ``hydra-optuna-sweeper``: its last release (1.3.0) requires ``optuna<3``, which pip
cannot install together with tlexp's ``optuna>=4`` (ResolutionImpossible), and its optuna 2.10
fails on SQLite storage with SQLAlchemy 2. This plugin keeps the same config keys (sampler,
direction, storage, study_name, n_trials, n_jobs, max_failure_rate, params with Hydra's sweep
syntax) on current Optuna. Hydra only instantiates plugins that live under ``hydra_plugins``.
"""
