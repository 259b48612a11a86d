"""Weights layouts ckptctl writes (and reads back): ``ckptctl-tensors`` and Keras 3 ``.weights.h5``."""
