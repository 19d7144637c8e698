"""Volume propagation engine: geometry, pre-processing, propagation, the segment_volume pipeline."""
