"""Detection: turn any detector's score into decisions with a guaranteed false-alarm or false-discovery rate.

Split-conformal p-values and thresholds (``split``), Benjamini–Hochberg (``bh``), calibration-conditional PAC
ranks and p-values (``pac``), the calibrated :class:`ConformalDetector` (``detector``) and the calibrated
combination of several detectors, :class:`ConformalEnsemble` (``ensemble``).
"""
