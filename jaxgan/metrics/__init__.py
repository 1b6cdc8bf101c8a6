"""Evaluation metrics: FID, Inception Score and KID that match the reference implementations.

`inception` holds the FID Inception-v3 network and feature extraction (JAX/Flax); `fid` holds
the numpy/scipy math on the extracted features. Import the submodules directly; this package
imports nothing heavy so that `import jaxgan.metrics.fid` stays cheap.
"""
