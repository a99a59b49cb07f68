"""Loss terms of Wang 2019 and Cole et al. 2017."""
