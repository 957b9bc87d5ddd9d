"""Seeded, identity-structured features for benchmarking the clustering stage.

Real re-ID features are not random points: images of one person lie close
together, cameras shift every image they take, look-alike people sit near
each other and an occluded body part carries no identity at all. Timings of
kNN, Jaccard and DBSCAN depend on that structure (how many reciprocal
neighbours, how many pairs fall under eps, how large the clusters grow), so
the benchmark draws features with it rather than uniform noise:

* ``N / images_per_identity`` identities with uneven image counts (at least
  2 each, log-normal weights; Market-1501 has 12936 images of 751 people);
* identities come in look-alike groups: each part prototype is a shared
  group direction plus the identity's own direction;
* every identity is seen by 2 to ``cameras`` cameras; a camera adds its own
  direction to every part of the images it takes;
* pose, background and the detector's crop vary along a few shared
  directions (a ``nuisance_rank``-dim subspace per part), so two images of
  different people in a similar pose are close: each identity has its own
  spread along them (some people are easy, some hard: the hard ones end as
  outliers, or merge with look-alikes); plus a little isotropic noise;
* a fraction of the images has one part occluded: that part's feature is
  replaced by noise;
* the global feature is the sum of the part features (as global average
  pooling is the mean of the stripes) plus a little noise of its own;
* every feature is L2-normalised (docs/method.md §2 inputs).

With the defaults, DBSCAN at eps 0.6 (k1 = 30, k2 = 6, min_samples = 4) finds
clusters resembling a PPLR epoch on Market-1501: somewhat fewer clusters than
identities (look-alikes merge, hard identities fall apart), and a tenth to a
fifth of the images left as outliers (N = 2000: 110 clusters of 118
identities, 9% outliers; N = 12936: 646 of 761, 19%; seed 0, D = 2048).
Isotropic noise alone would not do: in 2048 dimensions every image would
still find its own identity first and nothing would be an outlier.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class IdentityFeatureConfig:
    """Parameters of :func:`identity_features` (all norms are of D-dim vectors)."""

    images_per_identity: float = 17.0   # mean; Market-1501: 12936 / 751
    identities_per_group: int = 4       # look-alike group size
    group_weight: float = 0.6           # norm of the shared group direction in a prototype
    cameras: int = 6
    camera_weight: float = 0.35         # norm of a camera's shift per part
    nuisance_rank: int = 32             # dimension of the shared pose/background subspace
    spread_min: float = 0.9             # per-identity nuisance norm, uniform in [min, max]
    spread_max: float = 2.0
    image_noise: float = 0.5            # isotropic noise norm of every image
    occlusion_rate: float = 0.15        # fraction of images with one part replaced by noise
    global_noise: float = 0.3           # extra noise norm on the global feature

    def describe(self) -> dict:
        return {"name": "benchmarks.features.identity_features", **asdict(self)}


def _unit_rows(generator: torch.Generator, rows: int, dim: int) -> torch.Tensor:
    """``rows`` random directions of norm 1 (isotropic)."""
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=1)


def _noise(generator: torch.Generator, rows: int, dim: int, norm: torch.Tensor | float
           ) -> torch.Tensor:
    """Gaussian rows whose expected norm is ``norm`` (a scalar or one value per row)."""
    scale = torch.as_tensor(norm, dtype=torch.float32).reshape(-1, 1) / math.sqrt(dim)
    return torch.randn(rows, dim, generator=generator) * scale


def identity_counts(n: int, config: IdentityFeatureConfig, generator: torch.Generator
                    ) -> torch.Tensor:
    """Images per identity: at least 2 each (1 when n is tiny), summing to ``n``."""
    identities = max(1, round(n / config.images_per_identity))
    floor = min(2, n // identities)
    weights = torch.exp(0.5 * torch.randn(identities, generator=generator))
    extra = torch.multinomial(weights, n - floor * identities, replacement=True,
                              generator=generator) if n > floor * identities else \
        torch.empty(0, dtype=torch.int64)
    return floor + torch.bincount(extra, minlength=identities)


def identity_features(n: int, dim: int = 2048, parts: int = 3, seed: int = 0,
                      config: IdentityFeatureConfig = IdentityFeatureConfig(),
                      chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features of ``n`` images: ``(x_g (N, D), x_p (N, D, N_p), identity (N,))``.

    Deterministic for a given seed (torch's CPU generator). Images are built
    ``chunk`` rows at a time, so the temporaries stay small next to the output.
    Images are ordered by identity, as in a training list sorted by file name.
    """
    if n < 1 or dim < 2 or parts < 1:
        raise ValueError(f"need n >= 1, dim >= 2 and parts >= 1, got {n}, {dim}, {parts}")
    generator = torch.Generator().manual_seed(seed)
    counts = identity_counts(n, config, generator)
    identities = counts.numel()
    groups = -(-identities // config.identities_per_group)
    group_of = torch.randperm(identities, generator=generator) % groups
    # prototypes[id, part]: unit vector = group direction + the identity's own direction
    group_directions = _unit_rows(generator, groups * parts, dim).view(groups, parts, dim)
    own = _unit_rows(generator, identities * parts, dim).view(identities, parts, dim)
    own_weight = math.sqrt(1 - config.group_weight ** 2)
    prototypes = config.group_weight * group_directions[group_of] + own_weight * own
    nuisance_basis = _unit_rows(generator, parts * config.nuisance_rank, dim
                                ).view(parts, config.nuisance_rank, dim)
    camera_shift = config.camera_weight * _unit_rows(generator, config.cameras * parts, dim
                                                     ).view(config.cameras, parts, dim)
    # every identity is seen by a random subset of 2..cameras cameras
    seen_by = torch.stack([torch.randperm(config.cameras, generator=generator)
                           for _ in range(identities)])
    num_seen = torch.randint(min(2, config.cameras), config.cameras + 1, (identities,),
                             generator=generator)
    spread = config.spread_min + (config.spread_max - config.spread_min) * torch.rand(
        identities, generator=generator)

    identity = torch.repeat_interleave(torch.arange(identities), counts)
    camera = seen_by[identity, (torch.rand(n, generator=generator) * num_seen[identity]).long()]
    occluded = torch.rand(n, generator=generator) < config.occlusion_rate
    occluded_part = torch.randint(0, parts, (n,), generator=generator)

    x_g = torch.empty(n, dim)
    x_p = torch.empty(n, dim, parts)
    for r0 in range(0, n, chunk):
        rows = slice(r0, min(n, r0 + chunk))
        ids, size = identity[rows], min(n, r0 + chunk) - r0
        raw = torch.empty(size, parts, dim)
        for p in range(parts):
            pose = _noise(generator, size, config.nuisance_rank, spread[ids]) @ nuisance_basis[p]
            raw[:, p] = (prototypes[ids, p] + camera_shift[camera[rows], p] + pose
                         + _noise(generator, size, dim, config.image_noise))
            hidden = occluded[rows] & (occluded_part[rows] == p)
            raw[hidden, p] = _noise(generator, int(hidden.sum()), dim, 1.0 + config.camera_weight)
        own_noise = _noise(generator, size, dim, config.global_noise * math.sqrt(parts))
        x_g[rows] = torch.nn.functional.normalize(raw.sum(1) + own_noise, dim=1)
        x_p[rows] = torch.nn.functional.normalize(raw, dim=2).transpose(1, 2)
    return x_g, x_p, identity
