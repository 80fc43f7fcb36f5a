"""The Veracity BentoML service: the registry's champion behind a REST API.

A thin layer over the :mod:`veracity` library (DESIGN §2): every computation is the
library's, and :class:`veracity.analyzer.Analyzer` is the one inference path. This package
owns what only a server needs: configuration from the environment (:mod:`serving.config`),
loading and watching the model (:mod:`serving.model`), HTTP concerns (API keys, body
limits, request ids: :mod:`serving.middleware`) and the routes (:mod:`serving.service`).
"""
