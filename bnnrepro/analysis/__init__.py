"""Analyses of networks: memory and compute profile (profile.py), optimizer training state
(training_state.py), and the high-dimensional geometry of binarization (geometry.py, geometry_plots.py)."""
