"""Drift monitoring: the service's request log against what the bundle was validated on.

- :mod:`monitoring.window`: a window of the log, every row accounted for and checked
  (Great Expectations) on the way in;
- :mod:`monitoring.drift`: the bundle's reference, the drift tests (Evidently), the decision;
- :mod:`monitoring.run`: the entry points (``veracity monitor``, the ``monitor`` stage);
- :mod:`monitoring.simulate` and :mod:`monitoring.shifts`: simulated request streams, shifted
  or not, through the real Analyzer (``bench/monitor_drift.py`` measures the monitor on them).
"""
