"""Image I/O through SimpleITK and Slicer-compatible segmentation writers."""
