"""Conformal risk control for segmentation maps (COAT): the exact CRC threshold and the AT/COAT correction
(``control``, with the compiled kernel ``_jumps_kernel``), their prediction sets (``sets``), and training the
threshold predictor f_D with the one trainer (``threshold_training``).
"""
