"""The fused Triton PPLR classification loss against its PyTorch twin.

On a CPU machine the kernels run in the Triton interpreter (tests/conftest.py),
so shapes are small; a forced small BLOCK_C makes several class chunks.
Tolerances: float32 losses 1e-5 relative; float32 gradients 1e-5 relative
plus 1e-5 x the largest gradient entry absolute (entries near 0 have no
meaningful relative error); float16 and bfloat16 gradients: one unit in the
last place of their dtype (2^-10, 2^-7), since the interpreter rounds
float32 -> bfloat16 by truncation where a GPU rounds to nearest.
"""
import pytest
import torch

from pplr_fast.kernels.pplr_classification_loss import launch_config
from pplr_fast.losses import pplr_classification_loss, pplr_classification_loss_fused

UPSTREAM = (0.7, -1.3)        # d total / d loss_global, d total / d loss_parts


def make_inputs(rng, device, batch, num_classes, num_parts, dtype=torch.float32, scale=3.0):
    logits_g = torch.tensor(rng.normal(size=(batch, num_classes)) * scale, dtype=dtype,
                            device=device)
    part_major = torch.tensor(rng.normal(size=(num_parts, batch, num_classes)) * scale, dtype=dtype,
                              device=device)
    logits_p = part_major.permute(1, 2, 0)               # the model's layout
    targets = torch.tensor(rng.integers(0, num_classes, size=batch), device=device)
    scores = torch.tensor(rng.random((batch, num_parts)), dtype=torch.float32, device=device)
    return logits_g, logits_p, targets, scores


def run(fn, logits_g, logits_p, targets, scores, **kwargs):
    """Losses and gradients of ``UPSTREAM . (loss_global, loss_parts)``."""
    g = logits_g.detach().clone().requires_grad_()
    p = logits_p.detach().clone().requires_grad_() if logits_p.is_contiguous() else \
        logits_p.detach().requires_grad_()
    loss_g, loss_p = fn(g, p, targets, scores, **kwargs)
    (UPSTREAM[0] * loss_g + UPSTREAM[1] * loss_p).backward()
    return loss_g.detach(), loss_p.detach(), g.grad, p.grad, g, p


def reference(logits_g, logits_p, targets, scores, **kwargs):
    return run(pplr_classification_loss, logits_g.float(), logits_p.float(), targets, scores,
               backend="reference", **kwargs)


def assert_close(got, want, rel):
    got, want = got.double(), want.double()
    atol = rel * max(want.abs().max().item(), 1e-30)
    assert torch.allclose(got, want, rtol=rel, atol=atol), (got - want).abs().max().item()


def check_against_twin(logits_g, logits_p, targets, scores, use_aals, block_c=None,
                       grad_rel=1e-5, same_layout=True):
    kwargs = dict(use_aals=use_aals, epsilon=0.1)
    want = reference(logits_g, logits_p, targets, scores, **kwargs)
    got = run(pplr_classification_loss_fused, logits_g, logits_p, targets, scores,
              block_c=block_c, **kwargs)
    for got_loss, want_loss in zip(got[:2], want[:2]):
        assert got_loss.dtype == torch.float32
        assert got_loss.item() == pytest.approx(want_loss.item(), rel=1e-5, abs=1e-6)
    for grad, leaf, want_grad in ((got[2], got[4], want[2]), (got[3], got[5], want[3])):
        assert grad.dtype == leaf.dtype
        assert grad.stride() == leaf.stride() or not same_layout
        assert_close(grad, want_grad, grad_rel)


@pytest.mark.parametrize("use_aals", [True, False])
@pytest.mark.parametrize("batch,num_classes,num_parts,block_c", [
    (4, 37, 3, None),       # one chunk, C not a power of two
    (4, 37, 3, 16),         # three chunks, the last partial
    (8, 300, 3, 64),        # five chunks
    (1, 2, 3, None),        # a single sample, C = 2
    (3, 2, 1, None),        # one part
    (5, 20, 5, 8),          # N_p not a power of two, padded parts
])
def test_fused_matches_twin(rng, device, use_aals, batch, num_classes, num_parts, block_c):
    inputs = make_inputs(rng, device, batch, num_classes, num_parts)
    check_against_twin(*inputs, use_aals=use_aals, block_c=block_c)


@pytest.mark.parametrize("use_aals", [True, False])
def test_scores_exactly_zero_and_one(rng, device, use_aals):
    logits_g, logits_p, targets, _ = make_inputs(rng, device, 4, 23, 3)
    for scores in (torch.zeros(4, 3), torch.ones(4, 3), torch.tensor([[0.0, 1.0, 0.5]] * 4)):
        check_against_twin(logits_g, logits_p, targets, scores.to(device), use_aals, block_c=16)


@pytest.mark.parametrize("use_aals", [True, False])
def test_large_logits(rng, device, use_aals):
    logits_g, logits_p, targets, scores = make_inputs(rng, device, 4, 45, 3)
    logits_g = torch.sign(logits_g) * 1e4
    logits_p = (torch.sign(logits_p) * 1e4).permute(2, 0, 1).contiguous().permute(1, 2, 0)
    check_against_twin(logits_g, logits_p, targets, scores, use_aals, block_c=16)
    # The running max moves in every chunk: the online rescaling is exercised.
    rising = torch.arange(45, dtype=torch.float32, device=device) * 400.0 - 9000.0
    check_against_twin(rising.repeat(4, 1), torch.stack([rising.repeat(4, 1)] * 3, 2), targets,
                       scores, use_aals, block_c=16)


def test_any_strides(rng, device):
    _, _, targets, scores = make_inputs(rng, device, 4, 30, 3)
    logits_g = torch.tensor(rng.normal(size=(30, 4)), dtype=torch.float32, device=device).t()
    logits_p = torch.tensor(rng.normal(size=(4, 60, 3)), dtype=torch.float32, device=device)[:, ::2]
    wide_scores = torch.tensor(rng.random((4, 6)), dtype=torch.float32, device=device)[:, ::2]
    check_against_twin(logits_g, logits_p, targets, wide_scores, True, block_c=16,
                       same_layout=False)       # the gradient of a strided slice is dense
    check_against_twin(logits_g, logits_p.contiguous(), targets.int(), scores, False)


@pytest.mark.parametrize("dtype,ulp", [(torch.float16, 2.0 ** -10), (torch.bfloat16, 2.0 ** -7)])
def test_half_precision_upcasts_on_load(rng, device, dtype, ulp):
    logits_g, logits_p, targets, scores = make_inputs(rng, device, 4, 50, 3, dtype=dtype)
    # The losses see exactly the upcast values: float32 accuracy.
    check_against_twin(logits_g, logits_p, targets, scores, True, block_c=16, grad_rel=ulp)
    check_against_twin(logits_g, logits_p, targets, scores, False, grad_rel=ulp)


def test_only_one_loss_used(rng, device):
    logits_g, logits_p, targets, scores = make_inputs(rng, device, 3, 12, 3)
    g = logits_g.clone().requires_grad_()
    p = logits_p.detach().requires_grad_()
    loss_g, _ = pplr_classification_loss_fused(g, p, targets, scores, use_aals=True)
    loss_g.backward()
    assert torch.equal(p.grad, torch.zeros_like(p))          # q carries no gradient
    ref = logits_g.clone().requires_grad_()
    pplr_classification_loss(ref, logits_p, targets, scores, use_aals=True,
                             backend="reference")[0].backward()
    assert_close(g.grad, ref.grad, 1e-5)


def test_launch_config_and_errors(rng, device):
    assert launch_config(20000, 3)[:2] == (2048, 4)
    assert launch_config(37, 3)[:2] == (64, 4)
    with pytest.raises(ValueError, match="power of two"):
        launch_config(37, 3, block_c=24)
    logits_g, logits_p, targets, scores = make_inputs(rng, device, 2, 5, 3)
    with pytest.raises(ValueError, match="float32/float16/bfloat16"):
        pplr_classification_loss_fused(logits_g.double(), logits_p.double(), targets, scores,
                                       use_aals=True)
    with pytest.raises(ValueError, match=r"scores \(2, 3\)"):
        pplr_classification_loss_fused(logits_g, logits_p, targets, scores[:, :2], use_aals=True)
    with pytest.raises(ValueError, match="targets must lie"):
        pplr_classification_loss_fused(logits_g, logits_p, targets + 5, scores, use_aals=True)
    with pytest.raises(ValueError, match="NaN"):
        pplr_classification_loss_fused(logits_g, logits_p, targets, scores * float("nan"),
                                       use_aals=False)
    with pytest.raises(ValueError, match="share a dtype"):
        pplr_classification_loss_fused(logits_g, logits_p.half(), targets, scores, use_aals=True)


COMPILE_FOR_H100 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import pplr_fast.kernels.pplr_classification_loss as op

def arg_type(name, dtype):
    if name in ("g_ptr", "p_ptr", "grad_g_ptr", "grad_p_ptr"):
        return "*" + dtype
    if name == "targets_ptr":
        return "*i64"
    if name.endswith("_ptr"):
        return "*fp32"
    if name in ("beta", "epsilon", "log_c"):
        return "fp32"
    return "constexpr" if name in ("USE_AALS", "BLOCK_C", "BLOCK_NP") else "i32"

block_c, block_np, num_warps = op.launch_config(20000, 3)
for kernel in (op._pplr_classification_forward_kernel, op._pplr_classification_backward_kernel):
    names = kernel.arg_names
    for dtype in ("fp32", "fp16", "bf16"):
        for use_aals in (True, False):
            constants = {(names.index("USE_AALS"),): use_aals, (names.index("BLOCK_C"),): block_c,
                         (names.index("BLOCK_NP"),): block_np}
            source = ASTSource(kernel, {n: arg_type(n, dtype) for n in names}, constants)
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": num_warps})
            assert compiled.asm["cubin"]
print("compiled")
"""


def test_kernels_compile_for_h100():
    """Both kernels compile to sm_90 code (no GPU needed; the interpreter would
    accept code that the CUDA compiler rejects)."""
    import os
    import subprocess
    import sys
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_H100], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
