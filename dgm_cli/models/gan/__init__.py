"""Generative adversarial networks: one shared model (base.py) and its variants.

* dcgan.py   - Radford et al. 2016: batch-normalised CNN critic, cross-entropy losses
* wgan.py    - Arjovsky et al. 2017: Wasserstein critic with weight clipping
* wgan_gp.py - Gulrajani et al. 2017: Wasserstein critic with a gradient penalty
* sngan.py   - Miyato et al. 2018: spectrally normalised critic, hinge loss
* cyclegan.py - Zhu et al. 2017: unpaired image translation, two ResNet generators, PatchGAN
  critics, least-squares, cycle and identity losses, image pools (data.domain_b)

losses.py holds each objective's losses and the gradient penalty, networks.py the generators
and critics (MLPs for 2-D toys, DCGAN-style CNNs, conditional batch norm, projection).
"""
