"""Kubeflow components: the pipeline's stages as KFP v2 lightweight components.

:mod:`components.stages` holds one component per stage (a shim over the stage function
in :mod:`veracity.stages`); :mod:`components.artifacts` what they share inside a task
(typed config from sections, artifacts laid out for the stage functions, metadata);
:mod:`components.sources` where a run's raw corpus comes from (a path, a DVC repository,
a bucket). :mod:`pipelines` wires them into the training DAG.
"""
