"""CrossModalityIdentitySampler: P x K batches, half RGB half IR per identity, determinism (the identity-pass epoch,
``epoch_length='identities'``; the default image-count epoch is tested in test_fidelity.py)."""
import unittest

import numpy as np

from crossmodal_bot.sampler import CrossModalityIdentitySampler

IR = {2, 5}


def records():
    """ids 0-3: 5 RGB + 3 IR images; id 4: 2 RGB only; id 5: 1 IR only."""
    pids, cams = [], []
    for pid in range(4):
        pids += [pid] * 8
        cams += [0, 1, 3, 4, 0, 2, 5, 2]
    pids += [4, 4, 5]
    cams += [1, 3, 5]
    return np.array(pids), np.array(cams)


class TestSampler(unittest.TestCase):
    def setUp(self):
        self.pids, self.cams = records()
        self.sampler = CrossModalityIdentitySampler(self.pids, self.cams, batch_size=8, num_instances=4,
                                                    is_infrared=IR, seed=0, epoch_length="identities")

    def batches(self, sampler):
        idx = list(sampler)
        self.assertEqual(len(idx), len(sampler))
        return [idx[i:i + 8] for i in range(0, len(idx), 8)]

    def test_batch_composition(self):
        self.assertEqual(len(self.sampler), 24)  # 6 ids, P = 2 -> 3 batches of 8
        seen = []
        for batch in self.batches(self.sampler):
            groups = [batch[i:i + 4] for i in (0, 4)]
            ids = [set(self.pids[g].tolist()) for g in groups]
            self.assertTrue(all(len(s) == 1 for s in ids))  # K consecutive indices of one id
            self.assertNotEqual(ids[0], ids[1])  # P distinct ids
            for g in groups:
                pid = int(self.pids[g[0]])
                seen.append(pid)
                ir = [int(c) in IR for c in self.cams[g]]
                if pid < 4:
                    self.assertEqual(ir, [False, False, True, True])  # 2 RGB then 2 IR
                    self.assertEqual(len(set(g[:2])), 2)  # enough RGB images: no repetition
                elif pid == 4:
                    self.assertEqual(ir, [False] * 4)  # RGB only: falls back, with replacement
                else:
                    self.assertEqual(g, [int(np.flatnonzero(self.pids == 5)[0])] * 4)
        self.assertEqual(sorted(seen), list(range(6)))  # every identity once per epoch

    def test_determinism_and_epochs(self):
        other = CrossModalityIdentitySampler(self.pids, self.cams, 8, 4, is_infrared=lambda c: c in IR, seed=0,
                                             epoch_length="identities")
        self.assertEqual(list(self.sampler), list(other))  # same seed; a callable works like the set
        epoch0 = list(self.sampler)
        self.sampler.set_epoch(1)
        epoch1 = list(self.sampler)
        self.assertNotEqual(epoch0, epoch1)
        self.sampler.set_epoch(0)
        self.assertEqual(list(self.sampler), epoch0)
        shifted = CrossModalityIdentitySampler(self.pids, self.cams, 8, 4, is_infrared=IR, seed=1,
                                               epoch_length="identities")
        self.assertNotEqual(list(shifted), epoch0)

    def test_incomplete_group_dropped_and_errors(self):
        s = CrossModalityIdentitySampler(self.pids, self.cams, batch_size=16, num_instances=4, is_infrared=IR,
                                         epoch_length="identities")
        self.assertEqual(len(s), 16)  # P = 4 of 6 ids; the remaining 2 wait for the next epoch
        self.assertEqual(len(list(s)), 16)
        with self.assertRaises(ValueError):
            CrossModalityIdentitySampler(self.pids, self.cams, batch_size=10, num_instances=4)


if __name__ == "__main__":
    unittest.main()
