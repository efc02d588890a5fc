"""Sequential latent-variable models: the deep Markov model (Krishnan et al. 2017) and the variational RNN
(Chung et al. 2015), with the ELBO and the importance-weighted bound over latent trajectories."""
