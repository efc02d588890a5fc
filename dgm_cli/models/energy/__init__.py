"""Energy-based models: p(x) = exp(-E(x)) / Z with an intractable Z.

* rbm.py  - Bernoulli-Bernoulli restricted Boltzmann machine (Hinton 2002; Hinton 2010's guide),
            trained with CD-k or persistent CD (Tieleman 2008), optional centering (Melchior et al. 2016)
* grbm.py - Gaussian-Bernoulli RBM for real-valued (dequantized) pixels (Cho, Ilin & Raiko 2011)
* dbn.py  - deep belief network by greedy layer-wise training (Hinton, Osindero & Teh 2006)
* dbm.py  - two-hidden-layer deep Boltzmann machine (Salakhutdinov & Hinton 2009)
* ebm.py  - deep energy network trained with short-run Langevin dynamics from a replay buffer
            (Du & Mordatch 2019; Grathwohl et al. 2020)

ais.py estimates log Z by annealed importance sampling (Salakhutdinov & Murray 2008), forward and
reverse, and enumerates it exactly on tiny models; base.py holds what the Boltzmann machines share
(AIS-based evaluation, data statistics, the objective keys).
"""
