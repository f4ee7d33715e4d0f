"""The napari side: a thin layer over the core. Nothing here is imported by the core."""
