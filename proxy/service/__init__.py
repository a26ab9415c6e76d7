"""The wiring of a running proxy: runtime, recorder, metrics, admin listener, workers."""
