"""Equation functions, one module per mechanism, and the layers built only from them."""
