"""The README's library snippet runs as written."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 3)
    return re.findall(r"```python\n(.*?)```", text[start:end if end != -1 else None], re.S)


def test_library_snippet_runs_on_unnormalised_features():
    (snippet,) = python_blocks("The clustering stage as a library")
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 32, generator=g)
    features_g = centres.repeat_interleave(10, 0) + 0.1 * torch.randn(60, 32, generator=g)
    features_p = torch.randn(60, 32, 3, generator=g) * 5         # raw, unnormalised part features
    scope = {"features_g": features_g, "features_p": features_p}
    exec(compile(snippet, "README.md", "exec"), scope)
    labels, scores, dense = scope["labels"], scope["scores"], scope["dense"]
    assert labels.shape == (60,) and int(labels.max()) >= 1
    assert scores.shape == (60, 3) and bool(((scores >= 0) & (scores <= 1)).all())
    assert dense.shape == (60, 60) and bool((dense <= 1).all())
