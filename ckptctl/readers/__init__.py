"""Low-level readers of checkpoint bytes: the restricted unpickler, TensorBundle, HDF5/zip sniffing.

Nothing here imports an ML framework. Format entries (``ckptctl.formats``) are built on these."""
