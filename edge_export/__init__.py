"""edge-export: Hugging Face models to validated, quantized edge bundles."""

__version__ = "0.1.0"
