"""Kubeflow pipelines: :mod:`pipelines.training` is the training DAG (``dvc.yaml`` on KFP),
compiled to ``pipelines/training.yaml``, run locally or submitted to a cluster
(:mod:`pipelines.run`)."""
