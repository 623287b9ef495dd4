"""Where configs live and how Hydra finds them (package configs, experiments, user folders)."""
