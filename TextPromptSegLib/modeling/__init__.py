"""Models: TGSAM-2 (SAM-2 + text) and TPP. Import submodules explicitly; this package imports nothing heavy."""
