"""Fused GPU kernels (Triton), each the fast form of one equation function of `src.layers`, tested equal to it."""
