"""Every error a user of oodgate can cause: all are OodgateError, so the CLI prints one line and exits 2."""

from __future__ import annotations


class FeatureSignWarning(UserWarning):
    """A method that assumes non-negative features was calibrated on signed features (e.g. ViT, Swin, ConvNeXt)."""


class OodgateError(ValueError):
    """Bad input or state: the message says what was wrong and what to do."""


class NotFittedError(OodgateError):
    """A detector or calibration was used before it was fitted."""


class ArtifactError(OodgateError):
    """A calibration file or graph is missing, of another version, tampered with or not made by oodgate."""


class ExportError(OodgateError):
    """The export failed or the exported graph did not match the PyTorch reference."""


class ProviderError(OodgateError):
    """A requested execution provider is missing or ONNX Runtime fell back to another one."""


class UnsupportedLayerError(OodgateError):
    """A layer or op of the model cannot be part of an exported gradient branch (AdaSCALE)."""


class CheckpointError(OodgateError):
    """A weights file that cannot be read, is not a plain state dict, or does not fit the model."""


class GradientTraceError(OodgateError, RuntimeError):
    """The traced gradient graph disagrees with eager autograd (a bug in a decomposition)."""


class TritonConfigError(OodgateError):
    """A Triton model configuration that does not match its graph, or cannot be parsed."""


__all__ = ["ArtifactError", "CheckpointError", "ExportError", "GradientTraceError", "NotFittedError", "OodgateError",
           "ProviderError", "TritonConfigError", "UnsupportedLayerError"]
