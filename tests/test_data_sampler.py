"""RandomIdentitySampler: P x K group structure, camera diversity, ranks, epochs."""
import numpy as np
import pytest
import torch

from pplr_fast.data import RandomIdentitySampler


def _toy_labels():
    """Identity 0: 8 images over 4 cameras; 1: 3 images in one camera;
    2: 5 images over 2 cameras; 3: a single image; 4: 6 images over 6 cameras;
    a few noise samples (pid -1)."""
    pids, cams = [], []
    for pid, cam_list in {0: [0, 0, 1, 1, 2, 2, 3, 3], 1: [5, 5, 5], 2: [0, 0, 0, 1, 1],
                          3: [2], 4: [0, 1, 2, 3, 4, 5], -1: [0, 1, 2]}.items():
        pids += [pid] * len(cam_list)
        cams += cam_list
    order = np.random.default_rng(0).permutation(len(pids))  # interleave identities
    return [pids[i] for i in order], [cams[i] for i in order]


def _groups(indices, k):
    assert len(indices) % k == 0
    return [indices[i:i + k] for i in range(0, len(indices), k)]


def test_groups_of_k_one_identity_each_every_identity_once():
    pids, cams = _toy_labels()
    sampler = RandomIdentitySampler(pids, cams, num_instances=4, seed=3)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 5 * 4
    groups = _groups(indices, 4)
    group_pids = [{pids[i] for i in g} for g in groups]
    assert all(len(p) == 1 for p in group_pids)
    assert sorted(p.pop() for p in group_pids) == [0, 1, 2, 3, 4]  # noise (-1) never drawn
    for group in groups:
        pid = pids[group[0]]
        available = sum(p == pid for p in pids)
        # identities with at least K images give K distinct images
        assert len(set(group)) == min(4, available)


def test_cameras_are_as_diverse_as_possible():
    pids, cams = _toy_labels()
    sampler = RandomIdentitySampler(pids, cams, num_instances=4, seed=0)
    for epoch in range(10):
        sampler.set_epoch(epoch)
        for group in _groups(list(sampler), 4):
            pid = pids[group[0]]
            cams_available = {c for p, c in zip(pids, cams) if p == pid}
            cams_drawn = [cams[i] for i in group]
            assert len(set(cams_drawn)) == min(4, len(cams_available))
            if pid == 2:  # two cameras: two images from each
                assert sorted(np.bincount(cams_drawn, minlength=2)[:2].tolist()) == [2, 2]


def test_camera_diversity_when_neighbouring_identities_share_a_camera():
    # identity 0 ends and identity 1 starts with camera 1: their cameras stay apart
    pids, cams = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 2]
    sampler = RandomIdentitySampler(pids, cams, num_instances=2, seed=0)
    for epoch in range(40):
        sampler.set_epoch(epoch)
        for group in _groups(list(sampler), 2):
            assert cams[group[0]] != cams[group[1]], (epoch, group)


def test_epoch_reseeding_is_reproducible_and_changes_the_order():
    pids, cams = _toy_labels()
    a = RandomIdentitySampler(pids, cams, num_instances=4, seed=7)
    b = RandomIdentitySampler(pids, cams, num_instances=4, seed=7)
    torch.manual_seed(0)
    first = list(a)
    torch.manual_seed(1)  # the global RNG plays no part
    assert list(b) == first
    assert list(a) != first  # a second pass in the same epoch continues the generator
    a.set_epoch(0)
    assert list(a) == first
    orders = set()
    for epoch in range(1, 6):
        a.set_epoch(epoch)
        orders.add(tuple(a))
    assert len(orders) == 5 and tuple(first) not in orders


def test_draws_are_uniform_over_identities_cameras_and_images():
    """Over many epochs, by hand: every identity leads a pass equally often; with 4
    cameras x 2 images and K=4 each image is drawn in half the epochs; with 6
    one-image cameras and K=4 each camera in 4/6 of them."""
    pids, cams = _toy_labels()
    sampler = RandomIdentitySampler(pids, cams, num_instances=4, seed=11)
    epochs = 600
    leading = np.zeros(5)
    drawn = np.zeros(len(pids))
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        leading[pids[indices[0]]] += 1
        for group in _groups(indices, 4):
            if pids[group[0]] in (0, 4):
                drawn[np.unique(group)] += 1
    assert np.all(np.abs(leading / epochs - 1 / 5) < 0.06), leading
    for pid, expected in ((0, 1 / 2), (4, 4 / 6)):
        frequency = drawn[[i for i, p in enumerate(pids) if p == pid]] / epochs
        assert np.all(np.abs(frequency - expected) < 0.09), (pid, frequency)


def test_short_identities_repeat_images_drawn_independently():
    # 2 images, K = 4: both once, then 2 repeats each uniform over the two images,
    # so the split is 2+2 with probability 1/2 and 3+1 or 1+3 with 1/4 each.
    sampler = RandomIdentitySampler([7, 7], [0, 1], num_instances=4, seed=5)
    counts = []
    for epoch in range(800):
        sampler.set_epoch(epoch)
        counts.append(list(sampler).count(0))
    frequency = np.bincount(counts, minlength=5)[1:4] / 800
    assert np.all(np.abs(frequency - [1 / 4, 1 / 2, 1 / 4]) < 0.06), frequency


def test_ranks_take_disjoint_groups_with_equal_lengths():
    pids = np.repeat(np.arange(11), 5)
    cams = np.tile(np.arange(5), 11)
    full = RandomIdentitySampler(pids, cams, num_instances=4, seed=1)
    ranks = [RandomIdentitySampler(pids, cams, 4, seed=1, num_replicas=3, rank=r) for r in range(3)]
    for sampler in ranks:
        sampler.set_epoch(2)
    full.set_epoch(2)
    full_groups = _groups(list(full), 4)
    per_rank = [list(s) for s in ranks]
    assert {len(x) for x in per_rank} == {len(ranks[0])} and len(ranks[0]) == 4 * 4  # ceil(11/3)=4
    for r, indices in enumerate(per_rank):
        # rank r holds full groups r, r+3, r+6, ... (wrapping round to pad)
        expected = [full_groups[(r + 3 * j) % 11] for j in range(4)]
        assert _groups(indices, 4) == expected
    seen = [tuple(g) for indices in per_rank for g in _groups(indices, 4)]
    assert len(seen) == 12 and len(set(seen)) == 11  # disjoint but for one wrapped pad group


def test_dataloader_batches_are_identity_structured():
    pids = np.repeat(np.arange(9), 6)
    cams = np.tile(np.arange(3), 18)
    sampler = RandomIdentitySampler(pids, cams, num_instances=3)
    dataset = torch.utils.data.TensorDataset(torch.arange(len(pids)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=6, sampler=sampler, drop_last=True)
    batches = [batch[0] for batch in loader]
    assert len(batches) == 4  # 27 indices -> 4 full batches of 2 identities x 3
    for batch in batches:
        batch_pids = pids[batch.numpy()].reshape(2, 3)
        assert (batch_pids == batch_pids[:, :1]).all() and batch_pids[0, 0] != batch_pids[1, 0]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="same length"):
        RandomIdentitySampler([0, 1], [0], 4)
    with pytest.raises(ValueError, match="rank"):
        RandomIdentitySampler([0, 1], [0, 0], 4, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="non-negative pid"):
        RandomIdentitySampler([-1, -1], [0, 0], 4)
