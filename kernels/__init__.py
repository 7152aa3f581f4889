"""Hot loops only: numba CPU kernels (``cpu``), numba.cuda twins (``gpu``), float64 references (``reference``)."""
