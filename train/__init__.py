"""Training, data pipelines and experiment configs for stn_jax (needs the ``train`` extra)."""
