"""The foundation every other layer builds on: registries, config loading, the run-config schema, building
parts from configs, and atomic file I/O. Imports nothing else of visionstack (but ``errors``) and no torch."""
