"""Analyses of networks: memory and compute profile (profile.py), optimizer training state
(training_state.py), and the high-dimensional geometry of binarization: its theory (geometry_theory.py), its
measurement in trained networks (geometry.py), their figures and report (geometry_plots.py, geometry_report.py)."""
