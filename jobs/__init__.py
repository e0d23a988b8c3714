"""Stage 1, configs → jobs: validate an experiment spec and expand it into a plan of work units."""
