"""The pipeline's stages: one typed function per stage, doing the whole stage.

Each function takes its typed config section(s), its input and output paths, report
locations and the repository root as arguments; writes its outputs, metrics, resolved
config and MLflow records itself; and raises a typed error (a :class:`StageError`, or
the library's own error for bad data) when a bound fails. ``veracity <verb>``
(:mod:`veracity.cli`), ``dvc repro`` through it, the Kubeflow components and the tests
all call the same functions; the CLI only parses arguments and prints.

==============  ==============================================================
module          stage function(s)
==============  ==============================================================
``generate``    :func:`~veracity.stages.generate.generate`,
                :func:`~veracity.stages.generate.benchmark_corpus`
``corpus``      :func:`~veracity.stages.corpus.corpus`
``validate``    :func:`~veracity.stages.validate.validate_manifest`,
                :func:`~veracity.stages.validate.validate_features`
``extract``     :func:`~veracity.stages.extract.extract`,
                :func:`~veracity.stages.extract.merge`
``train``       :func:`~veracity.stages.train.train`
``evaluate``    :func:`~veracity.stages.evaluate.evaluate`
``calibrate``   :func:`~veracity.stages.calibrate.calibrate`
``attack``      :func:`~veracity.stages.attack.attack`
``ensemble``    :func:`~veracity.stages.ensemble.ensemble`
``benchmark``   :func:`~veracity.stages.benchmark.benchmark`
``register``    :func:`~veracity.stages.register.register`
==============  ==============================================================

Importing this package imports nothing heavy: each stage module is imported on its own.
"""

from __future__ import annotations


class StageError(RuntimeError):
    """An expected stage failure whose message is for the user, not a traceback."""


class BoundError(StageError):
    """A measured figure is outside the bound the stage promises (the message names both)."""
