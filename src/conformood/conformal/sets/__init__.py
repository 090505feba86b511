"""Contrastive conformal covering sets in embedding space (CCS): the base :class:`ConformalSet` and its
quantile (``base``), the four families (``families``), pair sampling and evaluation (``sampling``), learning a
set with the one trainer (``training``), and the CCS eq. 23 OOD score as a detector (``detector``).
"""
