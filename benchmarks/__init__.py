"""Cross-process benchmarks of channels_engines beside its peers (see README.md)."""
