"""Variational autoencoders (Kingma & Welling 2014; Rezende et al. 2014) and the IWAE bound (Burda et al. 2015)."""
