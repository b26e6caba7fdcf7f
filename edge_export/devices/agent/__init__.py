"""The device-side agent: loads a bundle with its runtime, runs inputs, returns outputs and timings.

This package must stay self-contained (stdlib + numpy + the bundle's runtime, relative imports
only) because it is copied to devices that do not have edge-export installed. The host imports
the same code to run bundles in-process, so host and device never disagree on how a model is fed.
"""
