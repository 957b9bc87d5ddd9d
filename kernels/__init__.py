"""Triton kernels of pplr_fast (installed as ``pplr_fast.kernels``).

One operation per file: the kernels, the Python function in front of them and
(for losses) the ``autograd.Function``; each has a plain PyTorch twin in
``pplr_fast`` that the tests compare against.
"""

# Launch options of every kernel: FMA contraction stated explicitly, so the
# arithmetic does not change with Triton's default (which flips in Triton 3.10).
LAUNCH = dict(enable_fp_fusion=True)
